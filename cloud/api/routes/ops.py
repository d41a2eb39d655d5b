"""Operations: ``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json`` (and ``/docs``).

Anyone may ask whether the API is alive or ready; only an admin key learns
why it is not (the store's error can name hosts and users), reads the
metrics, or the OpenAPI document, unless ``metrics_public`` / ``docs_public``
open them (behind a private network or a separate port).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from userlayer.cloud.api.deps import (
    EngineDep,
    MaybeKey,
    MetricsDep,
    RegistryDep,
    SettingsDep,
    in_store,
    is_admin,
)
from userlayer.cloud.api.errors import ForbiddenError
from userlayer.cloud.auth import AuthError
from userlayer.cloud.core.link import EngineLink
from userlayer.cloud.exceptions import CloudError
from userlayer.cloud.metrics import EXPORTED_METRICS, select_families
from userlayer.cloud.registry import StoreUnavailableError
from userlayer.sdk.api import Health

__all__ = ["router"]

router = APIRouter(tags=["ops"])


def _admin_unless(public: bool, k: Any) -> None:
    if public:
        return
    if k is None:
        raise AuthError("an admin key is needed here")
    if not is_admin(k):
        raise ForbiddenError("only an admin key may read this")


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness (never touches the store)."""
    return Health(status="ok")


READY_TTL_S = 1.0


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(request: Request, k: MaybeKey, registry: RegistryDep) -> Any:
    """Readiness: the store and the engine answer. The checks are shown to admin keys only.

    The store is pinged at most once per second, whoever asks (a flood of
    anonymous probes cannot load the database or trip its circuit breaker).
    """
    state = request.app.state
    async with state.ready_lock:
        cached = state.ready_cache
        if cached is None or time.monotonic() - cached[0] > READY_TTL_S:
            engine: EngineLink = state.engine
            checks = {"model": engine.fingerprint}
            try:
                checks["registry"] = f"{await in_store(request, registry.ping) * 1000:.1f} ms"
                ok = True
            except StoreUnavailableError as e:
                checks["registry"] = f"unreachable: {e}"
                ok = False
            try:
                st = await asyncio.wait_for(engine.stats(), READY_TTL_S * 5)
                checks["engine"] = f"pid {engine.engine_pid}, queue {st['queue']}"
                store = st.get("store")  # the engine core's own view of the store
                if store is not None:
                    checks["engine"] += f", store {store['detail']}"
                    ok = ok and bool(store["ok"])
            except (CloudError, TimeoutError) as e:
                checks["engine"] = f"unreachable: {e}"
                ok = False
            cached = state.ready_cache = (time.monotonic(), ok, checks)
    _, ok, checks = cached
    body = Health(status="ready" if ok else "unready", checks=checks if is_admin(k) else {})
    return JSONResponse(body.model_dump(), 200 if ok else 503)


@router.get("/metrics", response_class=Response)
async def prometheus(
    k: MaybeKey, metrics: MetricsDep, settings: SettingsDep, engine: EngineDep
) -> Response:
    """Prometheus metrics (an admin key, unless ``metrics_public``).

    This worker's own, and the engine core's slot and cache metrics when the
    engine runs apart (with several workers, each reports the requests it saw).
    """
    _admin_unless(settings.metrics_public, k)
    text = generate_latest(metrics.registry).decode()
    if settings.engine_socket is not None:  # those families are the core's, never this worker's
        try:
            extra = str((await asyncio.wait_for(engine.stats(), 2.0)).get("metrics", ""))
        except (CloudError, TimeoutError):
            extra = ""
        text = select_families(text, EXPORTED_METRICS, keep=False) + extra
    return Response(text.encode(), media_type=CONTENT_TYPE_LATEST)


@router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request, k: MaybeKey, settings: SettingsDep) -> JSONResponse:
    """The OpenAPI document (an admin key, unless ``docs_public``)."""
    _admin_unless(settings.docs_public, k)
    return JSONResponse(request.app.openapi())


@router.get("/docs", include_in_schema=False)
async def docs(settings: SettingsDep) -> HTMLResponse:
    """Swagger UI, only with ``docs_public``."""
    _admin_unless(settings.docs_public, None)
    return get_swagger_ui_html(openapi_url="/openapi.json", title="userlayer API")
