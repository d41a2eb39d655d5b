"""The API worker's side of the engine socket (asyncio).

Each worker keeps one connection to the engine core; requests from all its
HTTP connections go through it, matched to their answers by id. A worker
holds at most ``max_queue`` requests in the core at once (past that it
answers 503 with ``Retry-After`` at once, nothing queued). When the core
goes away (a crash, a restart) every waiting request is answered 503 at
once, never left hanging, and the next request reconnects; a core that
comes back with a different base model is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from userlayer.cloud.batcher import QueueFullError
from userlayer.cloud.core.wire import HEADER, MAX_FRAME, ProtocolError, decode, encode
from userlayer.cloud.exceptions import CloudError
from userlayer.sdk.api import RecommendRequest, RecommendResponse

__all__ = ["EngineClient", "EngineUnavailableError"]

log = logging.getLogger(__name__)


class EngineUnavailableError(CloudError):
    """The engine core cannot be reached (crashed or restarting); retry after a while."""

    retry_after = 2.0


class EngineClient:
    """Sends requests to the engine core at ``path`` and awaits their answers."""

    def __init__(
        self,
        path: str | Path,
        fingerprint: str,
        max_queue: int,
        max_batch: int,
        on_batch: Callable[[int, float], None] | None = None,
        call_timeout_s: float = 60.0,
    ) -> None:
        self.path = str(path)
        self.fingerprint = fingerprint
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.on_batch = on_batch
        self.call_timeout_s = call_timeout_s
        self.engine_pid: int | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connect_lock: asyncio.Lock | None = None
        self._inflight = 0
        self._last_batch_s = 0.05
        self._seen_batch = 0

    async def start(self) -> None:
        """Connect now (a failure here is retried at the next request)."""
        self._connect_lock = asyncio.Lock()
        with contextlib.suppress(EngineUnavailableError):
            await self._ensure()

    async def stop(self) -> None:
        """Close the connection; waiting requests fail."""
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        self._fail_all(CloudError("the server is shutting down"))

    def depth(self) -> int:
        """Requests of this worker in the engine core now."""
        return self._inflight

    @property
    def connected(self) -> bool:
        """Whether the connection is up."""
        return self._writer is not None and not self._writer.is_closing()

    async def _ensure(self) -> asyncio.StreamWriter:
        if self._connect_lock is None:
            raise CloudError("the engine client is not started")
        async with self._connect_lock:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(self.path, limit=MAX_FRAME + HEADER.size), 2.0
                )
            except (OSError, TimeoutError) as e:
                raise EngineUnavailableError(f"the engine core is not reachable: {e}") from None
            task = asyncio.create_task(self._read_loop(reader, writer))
            try:  # published only once the core proved which base it serves
                info = await self._exchange(writer, {"op": "hello"})
                if info.get("fingerprint") != self.fingerprint:
                    raise EngineUnavailableError(
                        f"the engine core runs base {info.get('fingerprint')}, this worker "
                        f"serves {self.fingerprint}: restart the workers with the new model"
                    )
                self.engine_pid = int(info["pid"])
            except BaseException:  # a mismatch, a timeout, a cancelled caller
                writer.close()
                task.cancel()
                raise
            self._writer, self._reader_task = writer, task
            return writer

    async def _read_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        why = "the engine core closed the connection"
        try:
            while True:
                (n,) = HEADER.unpack(await reader.readexactly(HEADER.size))
                if n > MAX_FRAME:
                    raise ProtocolError(f"a frame of {n} bytes from the engine core")
                msg = decode(await reader.readexactly(n))
                fut = self._waiting.pop(msg.get("id"), None)  # type: ignore[arg-type]
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except asyncio.CancelledError:
            why = ""  # stopped on purpose
            raise
        except (asyncio.IncompleteReadError, OSError) as e:
            why = f"{why} ({type(e).__name__})"
        except ProtocolError as e:
            why = str(e)
        finally:
            writer.close()
            self._fail_all(EngineUnavailableError(why or "the worker is stopping"))
            if why:
                log.warning("engine client: %s", why)

    def _fail_all(self, e: Exception) -> None:
        waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(e)

    async def _call(self, msg: dict[str, Any]) -> dict[str, Any]:
        return await self._exchange(await self._ensure(), msg)

    async def _exchange(self, writer: asyncio.StreamWriter, msg: dict[str, Any]) -> dict[str, Any]:
        """Send ``msg`` and wait for its answer; sending and waiting share one deadline.

        Raises:
            EngineUnavailableError: the connection is closed or fails, the core did
                not answer in time, or it failed the batch.
        """
        if writer.is_closing():
            raise EngineUnavailableError("the engine core connection is closed")
        mid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[mid] = fut
        try:
            async with asyncio.timeout(self.call_timeout_s):  # a stopped core: never a hang
                writer.write(encode({**msg, "id": mid}))
                if writer.transport.get_write_buffer_size() > 1 << 20:
                    await writer.drain()
                out = await fut
        except TimeoutError:
            raise EngineUnavailableError(
                f"the engine core did not answer within {self.call_timeout_s:g} s"
            ) from None
        except OSError as e:
            raise EngineUnavailableError(f"the engine core connection failed: {e}") from None
        finally:
            self._waiting.pop(mid, None)
        if "error" in out:
            err = out["error"]
            if err.get("type") == "failed":  # a server fault, possibly passing: 503, retry
                raise EngineUnavailableError(f"the engine failed this batch: {err.get('message')}")
            raise CloudError(f"engine core: {err.get('type')}: {err.get('message')}")
        return dict(out) if msg["op"] == "recommend" else out["ok"]

    async def submit_json(self, req: RecommendRequest) -> bytes:
        """The JSON of a :class:`RecommendResponse` for ``req``, from the core's next batch.

        Raises:
            QueueFullError: this worker already has ``max_queue`` requests in the core.
            EngineUnavailableError: the core is unreachable or went away meanwhile.
        """
        if self._inflight >= self.max_queue:
            raise QueueFullError.after(self._last_batch_s, self.max_queue, self.max_batch)
        self._inflight += 1
        try:
            out = await self._call({"op": "recommend", "body": req.model_dump(mode="json")})
        finally:
            self._inflight -= 1
        self._last_batch_s = float(out["seconds"])
        if self.on_batch is not None and out["batch"] != self._seen_batch:
            self._seen_batch = int(out["batch"])  # each batch observed once per worker
            self.on_batch(int(out["rows"]), self._last_batch_s)
        return str(out["json"]).encode()

    async def submit(self, req: RecommendRequest) -> RecommendResponse:
        """:meth:`submit_json`, parsed."""
        return RecommendResponse.model_validate_json(await self.submit_json(req))

    async def evict(self, service: str, user_id: str) -> None:
        """Have the core drop the user's engine slot (after their deletion)."""
        await self._call({"op": "evict", "service": service, "user": user_id})

    async def stats(self) -> dict[str, Any]:
        """The core's queue depth, batches run and exported metrics."""
        return await self._call({"op": "stats"})
