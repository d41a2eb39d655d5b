"""``create_app``: the engine, the registry, the batcher and the routers in one FastAPI app."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from userlayer.cloud.api.errors import ERRORS, install_handlers
from userlayer.cloud.api.middleware import BodyLimit, RequestMetrics
from userlayer.cloud.api.routes import ops, recommend, users
from userlayer.cloud.auth import SCOPES, ApiKey, KeyStore, RateLimiter
from userlayer.cloud.batcher import BatcherConfig
from userlayer.cloud.components import build_engine, build_registry
from userlayer.cloud.core.client import EngineClient
from userlayer.cloud.core.link import EngineLink, InlineEngine
from userlayer.cloud.core.wire import hello
from userlayer.cloud.metrics import Metrics
from userlayer.cloud.settings import Settings

__all__ = ["app_from_env", "create_app"]


def _keys(s: Settings) -> KeyStore:
    store = KeyStore(path=s.api_keys_file)
    if s.admin_key is not None:
        secret = s.admin_key.get_secret_value()
        parts = secret.split("_", 2)
        if len(parts) == 3:
            digest = hashlib.sha256(parts[2].encode()).hexdigest()
            store.keys[parts[1]] = ApiKey(parts[1], "admin", SCOPES, digest)
    return store


def create_app(settings: Settings) -> FastAPI:
    """The API app; its lifespan connects to the engine (or starts the in-process one).

    With ``settings.engine_socket`` the app is one API worker of the engine
    core listening there (``userlayer serve``); without, the engine runs in
    this process behind a batcher thread.
    """
    metrics = Metrics()

    def on_batch(n: int, seconds: float) -> None:
        metrics.batch.observe(n)
        metrics.batch_seconds.observe(seconds)

    link: EngineLink
    if settings.engine_socket is None:  # the engine in this process
        from userlayer.cloud.service import Serving  # the model code: only where it runs

        engine = build_engine(settings)
        registry = build_registry(settings, engine.fingerprint, engine.shapes)
        serving = Serving(engine, registry, metrics, settings.store_deadline_ms / 1000)
        cfg = BatcherConfig(settings.max_batch, settings.max_wait_ms, settings.max_queue)
        link = InlineEngine(serving, cfg, on_batch)
    else:  # the engine core process owns the model; this worker needs only its identity
        info = hello(settings.engine_socket, settings.engine_connect_timeout_s)
        shapes = {k: tuple(v) for k, v in info["shapes"].items()}
        # no RAM tier here: the core reads adapters; a worker only verifies and stores them
        registry = build_registry(
            settings.model_copy(update={"cache_size": 0}), info["fingerprint"], shapes
        )
        link = EngineClient(
            settings.engine_socket,
            info["fingerprint"],
            max_queue=settings.max_queue,
            max_batch=settings.max_batch,
            on_batch=on_batch,
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await link.start()
        try:
            yield
        finally:
            await link.stop()
            registry.close()

    app = FastAPI(
        title="userlayer inference API",
        version="0.1.0",
        responses=ERRORS,
        lifespan=lifespan,
        description="Per-user adapters over one shared generative recommender.",
        openapi_url=None,  # served by ops.openapi, behind an admin key unless docs_public
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = link
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.keys = _keys(settings)
    # each of `workers` processes holds its share of every key's bucket, so the limit stays
    # about what the operator set; the kernel spreads connections (not requests) over the
    # workers, so a key with a single keep-alive connection gets about 1/workers of it
    share = settings.workers if settings.engine_socket is not None else 1
    app.state.limiter = RateLimiter(
        settings.rate_limit / share, max(1, settings.rate_burst // share)
    )
    app.state.ready_lock = asyncio.Lock()
    app.state.ready_cache = None
    install_handlers(app)
    for r in (recommend.router, users.router, ops.router):
        app.include_router(r)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)  # outermost
    return app


def app_from_env() -> FastAPI:
    """``create_app`` with settings from ``USERLAYER_*`` (uvicorn's factory for API workers)."""
    return create_app(Settings())  # type: ignore[call-arg]
