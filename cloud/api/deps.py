"""Dependencies of the API's routes: the caller's key, its tenant, and the app's parts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Header, Request
from fastapi import Path as PathParam
from starlette.concurrency import run_in_threadpool

from userlayer.cloud.api.errors import ForbiddenError
from userlayer.cloud.auth import ADMIN, ApiKey, AuthError, KeyStore, RateLimiter
from userlayer.cloud.core.link import EngineLink
from userlayer.cloud.metrics import Metrics
from userlayer.cloud.registry import AdapterRegistry, StoreUnavailableError
from userlayer.cloud.settings import Settings
from userlayer.sdk.api import ID_PATTERN
from userlayer.sdk.schemas import Service

__all__ = [
    "EngineDep",
    "Key",
    "MaybeKey",
    "MetricsDep",
    "RegistryDep",
    "SettingsDep",
    "UserId",
    "in_store",
    "is_admin",
    "tenant",
]

T = TypeVar("T")


def _presented(authorization: str | None, x_api_key: str | None) -> str | None:
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            raise AuthError("use `Authorization: Bearer <key>`")
        return token.strip()
    return x_api_key


async def _key(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> ApiKey:
    """The caller's API key (``Authorization: Bearer`` or ``X-API-Key``).

    Async on purpose: a sync dependency would cost every request a hop through
    the thread pool, which competes for the GIL with the batch thread.
    """
    keys: KeyStore = request.app.state.keys
    key = keys.authenticate(_presented(authorization, x_api_key))
    limiter: RateLimiter = request.app.state.limiter
    limiter.take(key.key_id)
    return key


async def _maybe_key(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> ApiKey | None:
    """The caller's key if one is presented (routes that answer anyone, in less detail)."""
    if authorization is None and x_api_key is None:
        return None
    return await _key(request, authorization, x_api_key)


async def _registry(request: Request) -> AdapterRegistry:
    reg: AdapterRegistry = request.app.state.registry
    return reg


async def _engine(request: Request) -> EngineLink:
    e: EngineLink = request.app.state.engine
    return e


async def _settings(request: Request) -> Settings:
    s: Settings = request.app.state.settings
    return s


async def _metrics(request: Request) -> Metrics:
    m: Metrics = request.app.state.metrics
    return m


Key = Annotated[ApiKey, Depends(_key)]
MaybeKey = Annotated[ApiKey | None, Depends(_maybe_key)]
UserId = Annotated[str, PathParam(pattern=ID_PATTERN, max_length=128)]
RegistryDep = Annotated[AdapterRegistry, Depends(_registry)]
EngineDep = Annotated[EngineLink, Depends(_engine)]
SettingsDep = Annotated[Settings, Depends(_settings)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]


def is_admin(k: ApiKey | None) -> bool:
    """Whether ``k`` is an admin key (tenant or scope)."""
    return k is not None and (k.tenant == ADMIN or "admin" in k.scopes)


def tenant(k: ApiKey, scope: str, service: Service | None) -> str:
    """The service the call acts on, after checking the key may use ``scope`` there.

    Raises:
        ForbiddenError: an admin key without ``?service=``, or a key of another
            service or without the scope.
    """
    svc = service.value if service is not None else (None if k.tenant == ADMIN else k.tenant)
    if svc is None:
        raise ForbiddenError(
            "an admin key must name the service: ?service=samokat|megamarket|kuper"
        )
    if not k.allows(scope, svc):
        raise ForbiddenError(f"this key may not `{scope}` for service {svc}")
    return svc


async def in_store(request: Request, fn: Callable[..., T], *args: object) -> T:
    """Run a registry call in a worker thread, for at most ``store_call_timeout_ms``.

    The event loop never waits on the database; a call that hangs is answered
    503 and counts against the store's circuit breaker.

    Raises:
        StoreUnavailableError: the call did not finish in time (or the store failed).
    """
    settings: Settings = request.app.state.settings
    registry: AdapterRegistry = request.app.state.registry
    timeout = settings.store_call_timeout_ms / 1000
    try:
        return await asyncio.wait_for(run_in_threadpool(fn, *args), timeout)
    except TimeoutError as e:
        registry.sql.note_timeout()
        raise StoreUnavailableError(f"the adapter store did not answer within {timeout:g} s") from e
