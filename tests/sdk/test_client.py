"""The SDK client: retries, Retry-After and typed errors, and the whole flow against the live API.

Retries are checked against a scripted HTTP server on 127.0.0.1 (it answers
503 or 429 a given number of times, then 200), so that the number of
attempts and the waits can be asserted; the API itself is the live server
of ``tests/cloud/test_api.py``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.cloud.test_api import Live, _package, live  # noqa: F401 - the live API fixture
from userlayer.sdk.client import (
    AsyncClient,
    AuthError,
    Client,
    NotFoundError,
    RequestError,
    RetryPolicy,
    UnavailableError,
)
from userlayer.sdk.schemas import Context, Mode

HEALTH = json.dumps({"status": "ok", "checks": {}}).encode()


class Scripted:
    """Answers the scripted (status, headers) in order, then 200 with a health body."""

    def __init__(self, script: list[tuple[int, dict[str, str]]]) -> None:
        self.script = list(script)
        self.times: list[float] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.times.append(time.monotonic())
                status, headers = outer.script.pop(0) if outer.script else (200, {})
                body = HEALTH if status == 200 else b'{"detail": "busy"}'
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Scripted:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


FAST = RetryPolicy(attempts=4, base=0.01, max_backoff=0.05)


def test_retry_after_is_respected_then_success() -> None:
    with (
        Scripted([(503, {"Retry-After": "1"}), (429, {})]) as srv,
        Client(srv.url, "k", retry=FAST) as c,
    ):
        assert c.health().status == "ok"
    assert len(srv.times) == 3
    assert srv.times[1] - srv.times[0] >= 0.95  # waited the server's Retry-After
    assert srv.times[2] - srv.times[1] < 0.5  # a 429 without the header: short backoff


def test_gives_up_after_the_attempts_with_a_typed_error() -> None:
    with (
        Scripted([(503, {})] * 10) as srv,
        Client(srv.url, "k", retry=FAST) as c,
        pytest.raises(UnavailableError) as e,
    ):
        c.health()
    assert e.value.status == 503 and len(srv.times) == 4


def test_connection_refused_is_retried_then_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens
    t0 = time.monotonic()
    with (
        Client(f"http://127.0.0.1:{port}", "k", retry=FAST, timeout=2) as c,
        pytest.raises(UnavailableError, match="GET /healthz"),
    ):
        c.health()
    assert time.monotonic() - t0 < 5


def test_async_client_retries_too() -> None:
    async def go(url: str) -> str:
        async with AsyncClient(url, "k", retry=FAST) as c:
            return (await c.health()).status

    with Scripted([(503, {"Retry-After": "0"})]) as srv:
        assert asyncio.run(go(srv.url)) == "ok"
    assert len(srv.times) == 2


@pytest.fixture
def client(live: Live) -> Iterator[Client]:  # noqa: F811 - the imported fixture
    with Client(live.url, live.keys["samokat"], retry=FAST) as c:
        yield c


def test_typed_errors_from_the_live_api(live: Live, client: Client) -> None:  # noqa: F811
    with Client(live.url, "ul_nope_nope", retry=FAST) as bad, pytest.raises(AuthError) as e:
        bad.recommend("u1", "samokat")
    assert e.value.status == 401
    with pytest.raises(AuthError):  # a samokat key asking for a megamarket user
        client.recommend("u1", "megamarket")
    with pytest.raises(NotFoundError):
        client.adapter("nobody-here")
    with pytest.raises(RequestError, match="k"):  # refused before sending
        client.recommend("u1", "samokat", k=0)
    with pytest.raises(RequestError, match="422"):
        client.upload_adapter("u1", b"not a package")


def test_whole_flow_through_the_client(live: Live, client: Client) -> None:  # noqa: F811
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert client.enroll_signer("sdk-user", pub).key_id
    meta = client.upload_adapter("sdk-user", _package(live, key, "sdk-user", "samokat", 1, 5))
    assert meta.version == 1 and client.adapter("sdk-user").sha256 == meta.sha256
    r = client.recommend(
        "sdk-user", "samokat", live.items["samokat"][:3], Context(mode=Mode.HUNGRY), k=7
    )
    assert r.personalized and r.adapter_version == 1 and len(r.items) == 7
    assert client.forget("sdk-user").deleted_versions == 1
    assert not client.recommend("sdk-user", "samokat").personalized

    async def from_async() -> bool:
        async with AsyncClient(live.url, live.keys["samokat"]) as ac:
            return (await ac.recommend("sdk-user", "samokat", k=3)).personalized

    assert asyncio.run(from_async()) is False
