"""The inference API (FastAPI): recommendations, adapter uploads, forgetting, health, metrics.

``create_app(settings)`` builds the engine, the registry and the batcher;
``userlayer serve`` runs it with uvicorn. Every route but the health checks
and ``/metrics`` needs an API key (``Authorization: Bearer ul_<id>_<secret>``
or ``X-API-Key``) whose tenant is the request's service (or admin) and whose
scopes include the route's. User routes act on the key's service; an admin
key names it with ``?service=``. Errors are JSON ``{"detail": ...}`` with a
4xx status; 503 (queue full, store down) carries ``Retry-After``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from fastapi import Depends, FastAPI, Header, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from userlayer.cloud.auth import SCOPES, ApiKey, AuthError, KeyStore, RateLimitedError, RateLimiter
from userlayer.cloud.batcher import Batcher, BatcherConfig, QueueFullError
from userlayer.cloud.engine.engine import Engine, EngineConfig
from userlayer.cloud.exceptions import CloudError
from userlayer.cloud.registry import (
    AdapterRegistry,
    RegistryConfig,
    RegistryError,
    RejectedError,
    StoreUnavailableError,
)
from userlayer.cloud.service import Metrics, Serving
from userlayer.cloud.settings import Settings
from userlayer.edge.keys import LocalKeyFile
from userlayer.sdk.api import (
    ID_PATTERN,
    AdapterMetadata,
    ErrorBody,
    ForgetResponse,
    Health,
    RecommendRequest,
    RecommendResponse,
    SignerRequest,
    SignerResponse,
)
from userlayer.sdk.schemas import Service

__all__ = ["create_app"]

BINARY = {"type": "string", "format": "binary"}


class ForbiddenError(CloudError):
    """The key is valid but may not do this."""


class NotFoundError(CloudError):
    """Nothing there (for this service)."""


class TooLargeError(CloudError):
    """The request body exceeds the limit."""


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": what}
    for status, what in (
        (401, "missing or invalid API key"),
        (403, "the key may not do this for this service"),
        (404, "no such user or adapter"),
        (409, "conflict (e.g. a version that is not newer)"),
        (413, "body too large"),
        (422, "invalid request or refused package"),
        (429, "rate limit of the key exceeded (Retry-After)"),
        (503, "at capacity or the adapter store is down (Retry-After)"),
    )
}


async def _key(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> ApiKey:
    """The caller's API key (``Authorization: Bearer`` or ``X-API-Key``).

    Async on purpose: a sync dependency would cost every request a hop through
    the thread pool, which competes for the GIL with the batch thread.
    """
    presented = x_api_key
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            raise AuthError("use `Authorization: Bearer <key>`")
        presented = token.strip()
    keys: KeyStore = request.app.state.keys
    key = keys.authenticate(presented)
    limiter: RateLimiter = request.app.state.limiter
    limiter.take(key.key_id)
    return key


Key = Annotated[ApiKey, Depends(_key)]
UserId = Annotated[str, PathParam(pattern=ID_PATTERN, max_length=128)]


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
    keys = None if s.kek_file is None else LocalKeyFile(s.kek_file, create=True)
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
        ),
    )
    return engine, registry


def create_app(settings: Settings) -> FastAPI:
    """The API app; its lifespan starts and stops the batcher."""
    engine, registry = _components(settings)
    metrics = Metrics()
    serving = Serving(engine, registry, metrics)
    keys = _keys(settings)

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
    )
    app.state.serving = serving
    app.state.keys = keys
    app.state.limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
    app.state.batcher = batcher

    def _err(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    @app.exception_handler(AuthError)
    async def _auth(_: Request, e: AuthError) -> JSONResponse:
        return _err(401, str(e), {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(ForbiddenError)
    async def _forbidden(_: Request, e: ForbiddenError) -> JSONResponse:
        return _err(403, str(e))

    @app.exception_handler(NotFoundError)
    async def _not_found(_: Request, e: NotFoundError) -> JSONResponse:
        return _err(404, str(e))

    @app.exception_handler(TooLargeError)
    async def _too_large(_: Request, e: TooLargeError) -> JSONResponse:
        return _err(413, str(e))

    @app.exception_handler(RejectedError)
    async def _rejected(_: Request, e: RejectedError) -> JSONResponse:
        return _err(409 if "not newer" in str(e) else 422, f"adapter refused: {e}")

    @app.exception_handler(RateLimitedError)
    async def _rate(_: Request, e: RateLimitedError) -> JSONResponse:
        return _err(429, str(e), {"Retry-After": str(int(e.retry_after))})

    @app.exception_handler(QueueFullError)
    async def _full(_: Request, e: QueueFullError) -> JSONResponse:
        return _err(503, str(e), {"Retry-After": str(int(e.retry_after))})

    @app.exception_handler(StoreUnavailableError)
    async def _store_down(_: Request, e: StoreUnavailableError) -> JSONResponse:
        return _err(503, "the adapter store is unavailable", {"Retry-After": "5"})

    @app.exception_handler(RegistryError)
    async def _registry(_: Request, e: RegistryError) -> JSONResponse:
        return _err(409, str(e))

    @app.middleware("http")
    async def _observe(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            return _err(413, f"body larger than {settings.max_body_bytes} bytes")
        t0 = time.perf_counter()
        resp = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        metrics.requests.labels(endpoint, str(resp.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
        return resp

    def tenant(k: ApiKey, scope: str, service: Service | None) -> str:
        svc = service.value if service is not None else (None if k.tenant == "admin" else k.tenant)
        if svc is None:
            raise ForbiddenError(
                "an admin key must name the service: ?service=samokat|megamarket|kuper"
            )
        if not k.allows(scope, svc):
            raise ForbiddenError(f"this key may not `{scope}` for service {svc}")
        return svc

    @app.post("/v1/recommend", response_model=RecommendResponse, tags=["recommend"])
    async def recommend(body: RecommendRequest, k: Key) -> RecommendResponse:
        """Top-k next items for one user in one context, with their adapter if they have one."""
        tenant(k, "recommend", body.service)
        metrics.queue.set(batcher.depth())
        return await batcher.submit(body)

    @app.put(
        "/v1/users/{user_id}/signer",
        response_model=SignerResponse,
        tags=["adapters"],
    )
    async def enroll(
        user_id: UserId, body: SignerRequest, k: Key, service: Service | None = None
    ) -> SignerResponse:
        """Enroll the Ed25519 key that signs this user's adapter packages."""
        svc = tenant(k, "upload", service)
        kid = registry.enroll(svc, user_id, bytes.fromhex(body.public_key))
        return SignerResponse(key_id=kid)

    @app.put(
        "/v1/users/{user_id}/adapter",
        response_model=AdapterMetadata,
        tags=["adapters"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        },
    )
    async def upload(
        user_id: UserId, request: Request, k: Key, service: Service | None = None
    ) -> AdapterMetadata:
        """Upload a sealed adapter package (verified before it is stored)."""
        svc = tenant(k, "upload", service)
        chunks, size = [], 0
        async for c in request.stream():
            size += len(c)
            if size > settings.max_body_bytes:
                raise TooLargeError(f"body larger than {settings.max_body_bytes} bytes")
            chunks.append(c)
        blob = b"".join(chunks)
        if not blob:
            raise RejectedError("empty body: send the package bytes as application/octet-stream")
        info = registry.put(svc, user_id, blob)
        return AdapterMetadata(**info.to_dict())

    @app.get("/v1/users/{user_id}/adapter", response_model=AdapterMetadata, tags=["adapters"])
    async def adapter_info(
        user_id: UserId, k: Key, service: Service | None = None
    ) -> AdapterMetadata:
        """Metadata of the user's newest adapter (never its tensors)."""
        svc = tenant(k, "recommend", service)
        info = registry.info(svc, user_id)
        if info is None:
            raise NotFoundError(f"user {user_id} has no adapter in {svc}")
        return AdapterMetadata(**info.to_dict())

    @app.delete("/v1/users/{user_id}", response_model=ForgetResponse, tags=["adapters"])
    async def forget(user_id: UserId, k: Key, service: Service | None = None) -> ForgetResponse:
        """Forget the user in the cloud: every version, their data key, signers, cached copies."""
        svc = tenant(k, "delete", service)
        n = registry.delete_user(svc, user_id)
        return ForgetResponse(user_id=user_id, service=Service(svc), deleted_versions=n)

    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz() -> Health:
        """Liveness."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, responses={503: {"model": Health}}, tags=["ops"])
    async def readyz() -> Any:
        """Readiness: model loaded, registry reachable."""
        checks = {"model": engine.fingerprint}
        try:
            checks["registry"] = f"{registry.ping() * 1000:.1f} ms"
        except StoreUnavailableError as e:
            checks["registry"] = f"unreachable: {e}"
            return JSONResponse(Health(status="unready", checks=checks).model_dump(), 503)
        return Health(status="ready", checks=checks)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["ops"])
    async def prometheus() -> Response:
        """Prometheus metrics."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
