"""API defects found by review (issue 18), each a regression test that failed before.

- a body without ``Content-Length`` (chunked) was read whole before authentication;
- a key with upload scope could add signers to a user who had one (a hijack);
- an explicit ``USERLAYER_KEK_FILE`` that was missing was silently created;
- the SDK put user ids into URLs unquoted (``forget("x/../victim")``).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.cloud.test_api import Live, _onboard, _settings, live  # noqa: F401 - the fixture
from userlayer.cloud.api import create_app
from userlayer.sdk.adapter import key_id
from userlayer.sdk.client import AuthError, Client, RequestError
from userlayer.sdk.exceptions import KeyProviderError
from userlayer.sdk.signers import endorse, enrollment_message, revocation_message


def _chunks(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b"{" * size
        sent += size


def test_a_chunked_body_past_the_limit_is_cut_before_authentication(live: Live) -> None:  # noqa: F811
    c = live.client(None)  # no key at all
    t0 = time.monotonic()
    # FastAPI reads a JSON body before it resolves the key; 200 MiB would be buffered whole
    r = c.post(
        "/v1/recommend",
        content=_chunks(200 << 20),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 413 and "larger than" in r.json()["detail"]
    assert time.monotonic() - t0 < 20
    port = int(live.url.rsplit(":", 1)[1])  # a declared length past the limit: refused at once
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"PUT /v1/users/u/adapter HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n"
        )
        assert sock.recv(64).startswith(b"HTTP/1.1 413")
    ok = live.client("samokat").post(  # a small chunked body still goes through
        "/v1/recommend",
        content=iter([b'{"user_id": "u", "service": "samokat"}']),
        headers={"Content-Type": "application/json"},
    )
    assert ok.status_code == 200, ok.text


def _raw(k: Ed25519PrivateKey) -> bytes:
    return k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_a_leaked_upload_key_cannot_add_a_signer(live: Live) -> None:  # noqa: F811
    c = live.client("samokat")
    own = _onboard(live, c, "hijack-me", "samokat")
    thief = Ed25519PrivateKey.generate()
    r = c.put("/v1/users/hijack-me/signer", json={"public_key": _raw(thief).hex()})
    assert r.status_code == 403 and "endorsement" in r.json()["detail"]
    with Client(live.url, live.keys["samokat"]) as sdk:
        new = Ed25519PrivateKey.generate()
        kid = key_id(new.public_key())
        msg = enrollment_message("samokat", "hijack-me", kid)
        assert (
            sdk.enroll_signer("hijack-me", _raw(new), endorsement=endorse(own, msg)).key_id == kid
        )
        assert sorted(sdk.signers("hijack-me").key_ids) == sorted([key_id(own.public_key()), kid])
        with pytest.raises(AuthError, match="endorsement"):
            sdk.revoke_signer("hijack-me", kid)
        old = key_id(own.public_key())
        done = sdk.revoke_signer(
            "hijack-me",
            old,
            endorsement=endorse(new, revocation_message("samokat", "hijack-me", old)),
        )
        assert done.revoked and sdk.signers("hijack-me").key_ids == [kid]
    admin = live.client("admin")  # an admin key may add one without an endorsement
    r = admin.put(
        "/v1/users/hijack-me/signer?service=samokat", json={"public_key": _raw(thief).hex()}
    )
    assert r.status_code == 200


def test_the_sdk_validates_and_quotes_user_ids(live: Live) -> None:  # noqa: F811
    c = live.client("samokat")
    _onboard(live, c, "victim", "samokat")
    with Client(live.url, live.keys["samokat"]) as sdk:
        for bad in ("x/../victim", "../victim", "a b", "", "x" * 129):
            with pytest.raises(RequestError, match="does not match"):
                sdk.forget(bad)
        assert sdk.adapter("victim").version == 1  # untouched
        with pytest.raises(Exception, match="404"):
            sdk.adapter("a:b.c")  # a valid id with reserved characters reaches its own path


def test_a_missing_explicit_kek_file_is_refused_not_created(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    kek = tmp_path / "mounted" / "registry.keks"  # the volume is not mounted
    s = _settings(
        tmp_path,
        tiny_model_dir,
        tmp_path / "k.json",
        kek_file=kek,
        backend="torch",
        env="development",
    )
    with pytest.raises(KeyProviderError, match="KEK file missing"):
        create_app(s)
    assert not kek.exists()
    from userlayer.sdk.crypto import init_key_file

    init_key_file(kek)  # `userlayer keys init-kek`: then it starts
    create_app(s)
    with pytest.raises(KeyProviderError, match="exists already"):
        init_key_file(kek)


def test_recommend_with_a_bad_id_in_the_path_is_a_4xx(live: Live) -> None:  # noqa: F811
    c = live.client("samokat")
    assert c.get("/v1/users/%2e%2e%2fvictim/adapter").status_code in (404, 422)
    assert httpx.get(f"{live.url}/healthz").status_code == 200


def test_anonymous_readiness_probes_cannot_load_the_store(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Defect (review): every anonymous /readyz pinged the store, so a flood could exhaust its
    pool and trip the circuit breaker for everyone."""
    from fastapi.testclient import TestClient

    s = _settings(tmp_path, tiny_model_dir, tmp_path / "k.json", backend="torch", env="development")
    app = create_app(s)
    pings = []
    real = app.state.registry.ping
    app.state.registry.ping = lambda: (pings.append(1), real())[1]
    with TestClient(app) as c:
        t0 = time.monotonic()
        answers = [c.get("/readyz") for _ in range(50)]
        elapsed = time.monotonic() - t0
    assert all(r.status_code == 200 for r in answers)
    assert len(pings) <= 2 + elapsed / 1.0  # at most one store ping per second
