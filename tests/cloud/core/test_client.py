"""The API worker's engine client against scripted cores on a real Unix socket.

Each fake core is a thread with a listening socket that answers ``hello``
as told and then misbehaves in one way: stops reading (as a SIGSTOPped
core does), or answers ``hello`` late and with another base.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from userlayer.cloud.core.client import EngineClient, EngineUnavailableError
from userlayer.cloud.core.wire import FrameReader, encode
from userlayer.sdk.api import RecommendRequest

FP = "base-a"


class FakeCore:
    """Accepts connections; ``serve(conn, reader)`` runs per connection in a thread."""

    def __init__(self, path: Path, serve: Callable[[socket.socket, FrameReader], None]) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.serve = serve
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):  # the client hung up: expected in these scripts
            self.serve(conn, FrameReader())

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def _frames(conn: socket.socket, reader: FrameReader) -> Iterator[dict[str, object]]:
    while True:
        data = conn.recv(1 << 16)
        if not data:
            return
        yield from reader.feed(data)


def _hello(mid: object, fp: str = FP) -> bytes:
    return encode({"id": mid, "ok": {"fingerprint": fp, "pid": 1, "shapes": {}}})


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "core.sock"


def test_a_core_that_stops_reading_is_a_503_within_the_deadline_never_a_hang(sock: Path) -> None:
    def stalled(conn: socket.socket, reader: FrameReader) -> None:
        msg = next(_frames(conn, reader))
        conn.sendall(_hello(msg["id"]))
        time.sleep(30)  # never reads again: the kernel buffer fills, the writer must wait

    core = FakeCore(sock, stalled)

    async def go() -> list[BaseException | bytes]:
        client = EngineClient(sock, FP, max_queue=100, max_batch=8, call_timeout_s=1.5)
        await client.start()
        big = RecommendRequest(
            user_id="u1", service="samokat", exclude=[f"item-{i:0120d}" for i in range(500)]
        )
        t0 = time.monotonic()
        out = await asyncio.gather(
            *(client.submit_json(big) for _ in range(40)), return_exceptions=True
        )
        assert time.monotonic() - t0 < 10
        await client.stop()
        return out

    try:
        out = asyncio.run(go())
    finally:
        core.close()
    assert all(isinstance(o, EngineUnavailableError) for o in out), out[:3]


def test_a_hello_cut_short_is_never_taken_for_a_checked_connection(sock: Path) -> None:
    def other_base(conn: socket.socket, reader: FrameReader) -> None:
        for msg in _frames(conn, reader):
            if msg["op"] == "hello":
                time.sleep(0.6)  # late, and another model
                conn.sendall(_hello(msg["id"], fp="base-b"))
            else:
                conn.sendall(encode({"id": msg["id"], "ok": {"queue": 0, "metrics": ""}}))

    core = FakeCore(sock, other_base)

    async def go() -> None:
        client = EngineClient(sock, FP, max_queue=10, max_batch=8, call_timeout_s=5)
        client._connect_lock = asyncio.Lock()  # started without connecting
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.stats(), 0.2)  # cancelled mid-hello
        with pytest.raises(EngineUnavailableError, match="base-b"):
            await client.stats()  # a new connection, checked: refused
        assert not client.connected
        await client.stop()

    try:
        asyncio.run(go())
    finally:
        core.close()


def test_a_core_that_goes_away_fails_waiting_requests_at_once(sock: Path) -> None:
    def dies(conn: socket.socket, reader: FrameReader) -> None:
        frames = _frames(conn, reader)
        msg = next(frames)
        conn.sendall(_hello(msg["id"]))
        next(frames)  # a request arrives; the core dies before answering
        conn.close()

    core = FakeCore(sock, dies)

    async def go() -> float:
        client = EngineClient(sock, FP, max_queue=10, max_batch=8, call_timeout_s=30)
        await client.start()
        t0 = time.monotonic()
        with pytest.raises(EngineUnavailableError, match="closed"):
            await client.submit_json(RecommendRequest(user_id="u1", service="samokat"))
        await client.stop()
        return time.monotonic() - t0

    try:
        assert asyncio.run(go()) < 5  # not the 30 s deadline
    finally:
        core.close()
