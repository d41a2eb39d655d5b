"""The API's errors, their statuses, and the handlers that turn them into JSON answers."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from userlayer.cloud.auth import AuthError, RateLimitedError
from userlayer.cloud.batcher import QueueFullError
from userlayer.cloud.core.client import EngineUnavailableError
from userlayer.cloud.exceptions import CloudError
from userlayer.cloud.registry import (
    EnrollmentError,
    RegistryError,
    RejectedError,
    StoreUnavailableError,
)
from userlayer.sdk.api import ErrorBody

__all__ = ["ERRORS", "ForbiddenError", "NotFoundError", "install_handlers"]


class ForbiddenError(CloudError):
    """The key is valid but may not do this."""


class NotFoundError(CloudError):
    """Nothing there (for this service)."""


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": what}
    for status, what in (
        (401, "missing or invalid API key"),
        (403, "the key (or the signature) may not do this for this service or user"),
        (404, "no such user or adapter"),
        (409, "conflict (e.g. a version that is not newer)"),
        (413, "body too large"),
        (422, "invalid request or refused package"),
        (429, "rate limit of the key exceeded (Retry-After)"),
        (503, "at capacity or the adapter store is down (Retry-After)"),
    )
}


def _err(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def install_handlers(app: FastAPI) -> None:
    """Map every domain error to its status (never a 500)."""

    @app.exception_handler(AuthError)
    async def _auth(_: Request, e: AuthError) -> JSONResponse:
        return _err(401, str(e), {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(ForbiddenError)
    async def _forbidden(_: Request, e: ForbiddenError) -> JSONResponse:
        return _err(403, str(e))

    @app.exception_handler(EnrollmentError)
    async def _enrollment(_: Request, e: EnrollmentError) -> JSONResponse:
        return _err(403, str(e))

    @app.exception_handler(NotFoundError)
    async def _not_found(_: Request, e: NotFoundError) -> JSONResponse:
        return _err(404, str(e))

    @app.exception_handler(RejectedError)
    async def _rejected(_: Request, e: RejectedError) -> JSONResponse:
        return _err(409 if "not newer" in str(e) else 422, f"adapter refused: {e}")

    @app.exception_handler(RateLimitedError)
    async def _rate(_: Request, e: RateLimitedError) -> JSONResponse:
        return _err(429, str(e), {"Retry-After": str(int(e.retry_after))})

    @app.exception_handler(QueueFullError)
    async def _full(_: Request, e: QueueFullError) -> JSONResponse:
        return _err(503, str(e), {"Retry-After": str(int(e.retry_after))})

    @app.exception_handler(EngineUnavailableError)
    async def _engine_down(_: Request, e: EngineUnavailableError) -> JSONResponse:
        return _err(503, str(e), {"Retry-After": str(int(e.retry_after))})

    @app.exception_handler(StoreUnavailableError)
    async def _store_down(_: Request, e: StoreUnavailableError) -> JSONResponse:
        return _err(503, "the adapter store is unavailable", {"Retry-After": "5"})

    @app.exception_handler(RegistryError)
    async def _registry(_: Request, e: RegistryError) -> JSONResponse:
        return _err(409, str(e))
