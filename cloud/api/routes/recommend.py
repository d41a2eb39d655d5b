"""``POST /v1/recommend``."""

from __future__ import annotations

from fastapi import APIRouter

from userlayer.cloud.api.deps import BatcherDep, Key, MetricsDep, tenant
from userlayer.sdk.api import RecommendRequest, RecommendResponse

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["recommend"])


@router.post("/recommend", response_model=RecommendResponse)
async def recommend(
    body: RecommendRequest, k: Key, batcher: BatcherDep, metrics: MetricsDep
) -> RecommendResponse:
    """Top-k next items for one user in one context, with their adapter if they have one."""
    tenant(k, "recommend", body.service)
    metrics.queue.set(batcher.depth())
    return await batcher.submit(body)
