"""A dynamic batcher: concurrent requests from different users become one engine call.

Requests wait in a bounded queue. One worker takes the first waiting request,
collects more until ``max_batch`` or until ``max_wait_ms`` passed, and runs
the batch function in its own thread (the engine is used by one batch at a
time; the event loop keeps accepting requests meanwhile). When the queue is
full, :meth:`Batcher.submit` raises :class:`QueueFullError` at once; the API
answers 503 with ``Retry-After`` instead of letting requests pile up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from userlayer.cloud.exceptions import CloudError

__all__ = ["Batcher", "BatcherConfig", "QueueFullError"]

Req = TypeVar("Req")
Res = TypeVar("Res")


class QueueFullError(CloudError):
    """The request queue is full; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"the server is at capacity; retry after {retry_after:.0f} s")
        self.retry_after = retry_after

    @classmethod
    def after(cls, last_batch_s: float, max_queue: int, max_batch: int) -> QueueFullError:
        """A full queue of ``max_queue`` drains in about ``max_queue / max_batch`` batch times."""
        return cls(max(1.0, round(last_batch_s * max_queue / max_batch)))


@dataclass(frozen=True)
class BatcherConfig:
    """Batch size, how long the first request waits for company, queue bound."""

    max_batch: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 512

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1 or self.max_wait_ms < 0:
            raise CloudError("`max_batch` and `max_queue` >= 1 and `max_wait_ms` >= 0 required")


class Batcher(Generic[Req, Res]):
    """Groups submitted requests into calls of ``fn(list of requests) -> list of results``."""

    def __init__(
        self,
        fn: Callable[[Sequence[Req]], Sequence[Res]],
        cfg: BatcherConfig | None = None,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.fn = fn
        self.cfg = cfg or BatcherConfig()
        self.on_batch = on_batch
        self._queue: asyncio.Queue[tuple[Req, asyncio.Future[Res]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="userlayer-batch")
        self._last_batch_s = 0.05

    async def start(self) -> None:
        """Start the worker on the running event loop."""
        self._queue = asyncio.Queue(self.cfg.max_queue)
        self._worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop the worker; waiting requests fail with :class:`CloudError`."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._queue is not None:
            while not self._queue.empty():
                _, fut = self._queue.get_nowait()
                if not fut.done():
                    fut.set_exception(CloudError("the server is shutting down"))
        self._pool.shutdown(wait=True)

    def depth(self) -> int:
        """Requests waiting."""
        return 0 if self._queue is None else self._queue.qsize()

    async def submit(self, req: Req) -> Res:
        """Queue ``req`` and wait for its result.

        Raises:
            QueueFullError: the queue is full (nothing was queued).
        """
        if self._queue is None:
            raise CloudError("the batcher is not running")
        fut: asyncio.Future[Res] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((req, fut))
        except asyncio.QueueFull:
            cfg = self.cfg
            raise QueueFullError.after(self._last_batch_s, cfg.max_queue, cfg.max_batch) from None
        return await fut

    async def _run(self) -> None:
        assert self._queue is not None
        q = self._queue
        loop = asyncio.get_running_loop()
        while True:
            batch = [await q.get()]
            deadline = loop.time() + self.cfg.max_wait_ms / 1000
            while len(batch) < self.cfg.max_batch:
                if not q.empty():
                    batch.append(q.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(q.get(), left))
                except TimeoutError:
                    break
            live = [(r, f) for r, f in batch if not f.done()]  # skip cancelled callers
            if not live:
                continue
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._pool, self.fn, [r for r, _ in live])
            except Exception as e:  # the batch function failed: every caller hears why
                for _, f in live:
                    if not f.done():
                        f.set_exception(e)
                continue
            self._last_batch_s = time.perf_counter() - t0
            if self.on_batch:
                self.on_batch(len(live), self._last_batch_s)
            for (_, f), res in zip(live, results, strict=True):
                if not f.done():
                    f.set_result(res)
