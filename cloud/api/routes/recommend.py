"""``POST /v1/recommend``."""

from __future__ import annotations

from fastapi import APIRouter, Response

from userlayer.cloud.api.deps import EngineDep, Key, MetricsDep, tenant
from userlayer.sdk.api import RecommendRequest, RecommendResponse

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["recommend"])


@router.post("/recommend", response_model=RecommendResponse)
async def recommend(
    body: RecommendRequest, k: Key, engine: EngineDep, metrics: MetricsDep
) -> Response:
    """Top-k next items for one user in one context, with their adapter if they have one."""
    tenant(k, "recommend", body.service)
    metrics.queue.set(engine.depth())
    # the engine's JSON as it is: a RecommendResponse, validated where it was made
    return Response(await engine.submit_json(body), media_type="application/json")
