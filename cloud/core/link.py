"""What the API's routes need of an engine, in the API's process or in the engine core.

:class:`EngineLink` is the routes' view; :class:`InlineEngine` keeps the
engine inside the API process (the embedded mode: tests, notebooks, one
small process), and :class:`~userlayer.cloud.core.client.EngineClient`
reaches the engine core process (``userlayer serve``'s default).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from userlayer.cloud.batcher import Batcher, BatcherConfig
from userlayer.sdk.api import RecommendRequest, RecommendResponse

if TYPE_CHECKING:  # the model code stays out of API workers that reach a core
    from userlayer.cloud.service import Serving

__all__ = ["EngineLink", "InlineEngine"]


class EngineLink(Protocol):
    """An engine the API submits requests to."""

    fingerprint: str
    engine_pid: int | None

    async def start(self) -> None:
        """Start accepting requests."""

    async def stop(self) -> None:
        """Stop; waiting requests fail."""

    def depth(self) -> int:
        """Requests waiting or running."""

    async def submit(self, req: RecommendRequest) -> RecommendResponse:
        """The response to ``req``, from the engine's next batch."""

    async def submit_json(self, req: RecommendRequest) -> bytes:
        """:meth:`submit`'s response as JSON bytes (what the API sends)."""

    async def evict(self, service: str, user_id: str) -> None:
        """Drop the user's engine slot (after their deletion)."""

    async def stats(self) -> dict[str, Any]:
        """Engine statistics; ``metrics`` holds Prometheus text the API does not have."""


class InlineEngine:
    """The engine in this process: a :class:`Batcher` running :meth:`Serving.run_batch`."""

    def __init__(
        self,
        serving: Serving,
        cfg: BatcherConfig,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.serving = serving
        self.batcher: Batcher[RecommendRequest, RecommendResponse] = Batcher(
            serving.run_batch, cfg, on_batch
        )
        self.fingerprint = serving.engine.fingerprint
        self.engine_pid: int | None = os.getpid()

    async def start(self) -> None:
        """Start the batcher."""
        await self.batcher.start()

    async def stop(self) -> None:
        """Stop the batcher."""
        await self.batcher.stop()

    def depth(self) -> int:
        """Requests waiting in the batcher."""
        return self.batcher.depth()

    async def submit(self, req: RecommendRequest) -> RecommendResponse:
        """Queue ``req`` in the batcher."""
        return await self.batcher.submit(req)

    async def submit_json(self, req: RecommendRequest) -> bytes:
        """:meth:`submit`'s response as JSON bytes."""
        return (await self.submit(req)).model_dump_json().encode()

    async def evict(self, service: str, user_id: str) -> None:
        """Nothing to do: the registry's deletion listener evicted the slot already."""

    async def stats(self) -> dict[str, Any]:
        """Queue depth; the metrics are the API's own."""
        return {"queue": self.depth(), "metrics": ""}
