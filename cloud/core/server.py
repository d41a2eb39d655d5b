"""The engine core's loop: requests from every API worker, batched continuously.

One thread, one ``selectors`` loop over a listening Unix socket and its
connections. Whenever requests are waiting, the loop takes up to
``max_batch`` of them (oldest first) and runs one engine call; while it runs,
the kernel buffers what the workers send, and the next batch starts as soon
as this one ends with everything that arrived meanwhile. Nothing waits for
company: an idle core answers a lone request at once.

Messages (JSON objects, :mod:`.wire`), each with the caller's ``id``:

- ``hello``: fingerprint, adapter shapes, backend, pid, max_batch;
- ``recommend`` with ``body`` (a :class:`~userlayer.sdk.api.RecommendRequest`);
  the answer carries the response's JSON and its batch (``batch`` number, ``rows``,
  ``seconds``);
- ``evict`` with ``service`` and ``user``: drop the user's engine slot (after
  a deletion) before answering;
- ``stats``: the store as the core sees it (readiness), queue depth,
  batches run, the core's own metrics (slot loads, registry cache, fallbacks).

A bad frame closes that connection only; a bad request body is answered
with an error of type ``invalid``; a failed batch answers each of its
callers with type ``failed``. A connection that closes (its worker died)
loses its waiting requests, nobody else's.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from pydantic import ValidationError

from userlayer.cloud.core.wire import FrameReader, ProtocolError, encode
from userlayer.cloud.metrics import EXPORTED_METRICS, select_families
from userlayer.cloud.service import Serving
from userlayer.sdk.api import RecommendRequest

__all__ = ["EngineCore"]

log = logging.getLogger(__name__)

MAX_OUTBOX = 64 << 20
PROBE_EVERY_S = 1.0
PROBE_TIMEOUT_S = 2.0  # a worker that stops reading is disconnected past this


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    reader: FrameReader = field(default_factory=FrameReader)
    out: bytearray = field(default_factory=bytearray)
    alive: bool = True
    writing: bool = False  # registered for EVENT_WRITE (answers wait in `out`)


@dataclass
class _Pending:
    conn: _Conn
    id: Any
    req: RecommendRequest


class EngineCore:
    """Serves :class:`Serving` batches to any number of connected API workers."""

    def __init__(
        self, serving: Serving, path: str | Path, max_batch: int, parent_pid: int | None = None
    ) -> None:
        self.serving = serving
        self.parent_pid = parent_pid  # the loop ends when this process is gone (an orphan)
        self.path = Path(path)
        self.max_batch = max_batch
        self.pending: deque[_Pending] = deque()
        self.batches = 0
        self.last_batch_s = 0.0
        self._stop = False
        self._sel = selectors.DefaultSelector()
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is the owner's only (0600)
        try:
            self._listener.bind(str(self.path))
        finally:
            os.umask(old)
        self._listener.listen(128)
        self._listener.setblocking(False)
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        # the store as this process sees it (its own pool and circuit breaker), for readiness
        self._probe_pool = ThreadPoolExecutor(1, thread_name_prefix="userlayer-store-probe")
        self._probe: Future[float] | None = None
        self._probe_started = 0.0
        self._store: tuple[float, bool, str] = (-1e9, False, "not checked yet")
        self.store_state()

    def stop(self) -> None:
        """Ask the loop to end after the batch it is running."""
        self._stop = True

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT end the loop gracefully (exit status 0)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def serve_forever(self) -> None:
        """Run until :meth:`stop`; closes the socket and the registry at the end."""
        try:
            while not self._stop:
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    log.warning("engine core: the process that started it is gone; stopping")
                    break
                for key, mask in self._sel.select(0 if self.pending else 0.5):
                    if key.data is None:
                        self._accept()
                        continue
                    conn: _Conn = key.data
                    if mask & selectors.EVENT_READ:
                        self._read(conn)
                    if conn.alive and mask & selectors.EVENT_WRITE:
                        self._flush(conn)
                if self.pending:
                    self._run_batch()
        finally:
            self.close()

    def close(self) -> None:
        """Close every connection and the socket (its file is removed)."""
        for key in list(self._sel.get_map().values()):
            if key.data is not None:
                self._drop(key.data)
        self._sel.close()
        self._listener.close()
        if self.path.exists():
            self.path.unlink()
        self._probe_pool.shutdown(wait=False, cancel_futures=True)
        self.serving.registry.close()

    # -- connections

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        self._sel.register(sock, selectors.EVENT_READ, _Conn(sock))

    def _drop(self, conn: _Conn) -> None:
        if not conn.alive:
            return
        conn.alive = False
        self._sel.unregister(conn.sock)
        conn.sock.close()
        if any(p.conn is conn for p in self.pending):  # its waiting requests go too
            self.pending = deque(p for p in self.pending if p.conn is not conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the worker is gone: its waiting requests are skipped
            self._drop(conn)
            return
        try:
            frames = conn.reader.feed(data)
        except ProtocolError as e:
            log.warning("engine core: dropping a connection that sent a bad frame: %s", e)
            self._drop(conn)
            return
        for msg in frames:
            try:
                self._handle(conn, msg)
            except Exception:  # one odd message costs its connection, never the core
                log.exception("engine core: dropping a connection after a message it sent")
                self._drop(conn)
                return

    def _send(self, conn: _Conn, msg: dict[str, Any], flush: bool = True) -> None:
        if not conn.alive:
            return
        conn.out += encode(msg)
        if flush:
            self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop(conn)
            return
        del conn.out[:sent]
        if len(conn.out) > MAX_OUTBOX:
            log.warning("engine core: a worker stopped reading; disconnecting it")
            self._drop(conn)
            return
        if conn.writing != bool(conn.out):  # a system call only when the interest changes
            conn.writing = bool(conn.out)
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.writing else 0)
            self._sel.modify(conn.sock, want, conn)

    # -- messages

    def _handle(self, conn: _Conn, msg: dict[str, Any]) -> None:
        mid, op = msg.get("id"), msg.get("op")
        if op == "recommend":
            try:
                req = RecommendRequest.model_validate(msg.get("body"))
            except ValidationError as e:
                self._send(conn, {"id": mid, "error": {"type": "invalid", "message": str(e)}})
                return
            self.pending.append(_Pending(conn, mid, req))
        elif op == "hello":
            eng = self.serving.engine
            info = {
                "fingerprint": eng.fingerprint,
                "shapes": {k: list(v) for k, v in eng.shapes.items()},
                "backend": eng.backend.name,
                "pid": os.getpid(),
                "max_batch": self.max_batch,
            }
            self._send(conn, {"id": mid, "ok": info})
        elif op == "evict":  # the slot and this process's decrypted copy
            self.serving.evict(str(msg.get("service")), str(msg.get("user")))
            self._send(conn, {"id": mid, "ok": True})
        elif op == "stats":
            self._send(conn, {"id": mid, "ok": self.stats()})
        else:
            self._send(conn, {"id": mid, "error": {"type": "invalid", "message": f"op {op!r}?"}})

    def store_state(self) -> dict[str, Any]:
        """Whether the store answered this process's last ping (one at most every second).

        The ping runs in a thread of its own, never in the loop; one that has not
        answered within ``PROBE_TIMEOUT_S`` counts as a failure while it hangs.
        """
        now = time.monotonic()
        fut = self._probe
        if fut is not None and fut.done():
            try:
                self._store = (now, True, f"{fut.result() * 1000:.1f} ms")
            except Exception as e:  # StoreUnavailableError, or anything the driver raised
                self._store = (now, False, f"unreachable: {e}")
            self._probe = fut = None
        if fut is None and now - self._store[0] > PROBE_EVERY_S:
            self._probe = self._probe_pool.submit(self.serving.registry.ping)
            self._probe_started = now
        if self._probe is not None and now - self._probe_started > PROBE_TIMEOUT_S:
            return {"ok": False, "detail": f"no answer for {now - self._probe_started:.1f} s"}
        return {"ok": self._store[1], "detail": self._store[2]}

    def stats(self) -> dict[str, Any]:
        """Queue depth, batches run, the store's state and the exported metrics."""
        text = generate_latest(self.serving.metrics.registry).decode()
        return {
            "store": self.store_state(),
            "queue": len(self.pending),
            "batches": self.batches,
            "last_batch_s": self.last_batch_s,
            "metrics": select_families(text, EXPORTED_METRICS, keep=True),
        }

    def _run_batch(self) -> None:
        # a dropped connection's requests left `pending` with it (`_drop`)
        batch = [self.pending.popleft() for _ in range(min(self.max_batch, len(self.pending)))]
        t0 = time.perf_counter()
        try:
            results = self.serving.run_batch([p.req for p in batch])
        except Exception as e:  # the batch failed: each caller hears why, the core goes on
            log.exception("engine core: a batch of %d failed", len(batch))
            err = {"type": "failed", "message": f"{type(e).__name__}: {e}"}
            answers = [{"id": p.id, "error": err} for p in batch]
        else:
            self.last_batch_s = time.perf_counter() - t0
            self.batches += 1
            info = {"batch": self.batches, "rows": len(batch), "seconds": self.last_batch_s}
            # the worker answers HTTP with these bytes as they are (no second validation)
            answers = [
                {"id": p.id, "json": res.model_dump_json(), **info}
                for p, res in zip(batch, results, strict=True)
            ]
        for p, msg in zip(batch, answers, strict=True):
            self._send(p.conn, msg, flush=False)
        for conn in {p.conn for p in batch}:  # one send per worker connection, not per row
            if conn.alive:
                self._flush(conn)
