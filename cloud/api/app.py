"""``create_app``: the engine, the registry, the batcher and the routers in one FastAPI app."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from fastapi import FastAPI

from userlayer.cloud.api.errors import ERRORS, install_handlers
from userlayer.cloud.api.middleware import BodyLimit, RequestMetrics
from userlayer.cloud.api.routes import ops, recommend, users
from userlayer.cloud.auth import SCOPES, ApiKey, KeyStore, RateLimiter
from userlayer.cloud.batcher import Batcher, BatcherConfig
from userlayer.cloud.engine.engine import Engine, EngineConfig
from userlayer.cloud.registry import AdapterRegistry, RegistryConfig, StoreConfig
from userlayer.cloud.service import Metrics, Serving
from userlayer.cloud.settings import Settings
from userlayer.sdk.api import RecommendRequest, RecommendResponse
from userlayer.sdk.crypto import LocalKeyFile

__all__ = ["create_app"]


def _keys(s: Settings) -> KeyStore:
    store = KeyStore(path=s.api_keys_file)
    if s.admin_key is not None:
        secret = s.admin_key.get_secret_value()
        parts = secret.split("_", 2)
        if len(parts) == 3:
            digest = hashlib.sha256(parts[2].encode()).hexdigest()
            store.keys[parts[1]] = ApiKey(parts[1], "admin", SCOPES, digest)
    return store


def _components(s: Settings) -> tuple[Engine, AdapterRegistry]:
    engine = Engine(
        s.model_dir,
        EngineConfig(
            backend=s.backend,
            onnx_dir=None if s.onnx_dir is None else str(s.onnx_dir),
            beam=s.beam,
            slots=s.slots,
            threads=s.threads,
            device=s.device,
        ),
    )
    recipient = None
    if s.recipient_key_file is not None:
        raw = bytes.fromhex(Path(s.recipient_key_file).read_text().strip())
        recipient = X25519PrivateKey.from_private_bytes(raw)
    # an explicit KEK file must exist: a replica whose volume is not mounted must not make one
    keys = None if s.kek_file is None else LocalKeyFile(s.kek_file)
    registry = AdapterRegistry(
        s.registry,
        engine.fingerprint,
        engine.shapes,
        keys=keys,
        recipient_key=recipient,
        cfg=RegistryConfig(
            cache_size=s.cache_size,
            max_package_bytes=s.max_body_bytes,
            require_privacy=s.require_privacy,
            shred_on_delete=s.shred_on_delete,
        ),
        store=StoreConfig(
            connect_timeout_s=s.store_connect_timeout_s,
            statement_timeout_ms=s.store_statement_timeout_ms,
            pool_size=s.store_pool_size,
        ),
    )
    return engine, registry


def create_app(settings: Settings) -> FastAPI:
    """The API app; its lifespan starts and stops the batcher."""
    engine, registry = _components(settings)
    metrics = Metrics()
    serving = Serving(engine, registry, metrics, settings.store_deadline_ms / 1000)

    def on_batch(n: int, seconds: float) -> None:
        metrics.batch.observe(n)
        metrics.batch_seconds.observe(seconds)

    batcher: Batcher[RecommendRequest, RecommendResponse] = Batcher(
        serving.run_batch,
        BatcherConfig(settings.max_batch, settings.max_wait_ms, settings.max_queue),
        on_batch,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
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
    app.state.serving = serving
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.keys = _keys(settings)
    app.state.limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
    app.state.batcher = batcher
    app.state.ready_lock = asyncio.Lock()
    app.state.ready_cache = None
    install_handlers(app)
    for r in (recommend.router, users.router, ops.router):
        app.include_router(r)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)  # outermost
    return app
