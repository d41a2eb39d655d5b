"""The inference API client for service backends: :class:`Client` and :class:`AsyncClient`.

Both speak the contracts of :mod:`userlayer.sdk.api` over httpx, with a
timeout per request and retries with exponential backoff and full jitter on
503, 429 and connection errors (a ``Retry-After`` header is respected, up to
``RetryPolicy.max_wait``). Errors are typed: :class:`AuthError` (401/403),
:class:`NotFoundError` (404), :class:`RequestError` (the server refused the
request: 400/409/413/422, with its message), :class:`UnavailableError`
(503/429/connection, after the retries). Importing this module never imports
torch.

::

    with Client("http://127.0.0.1:8000", api_key) as c:
        r = c.recommend("u42", "samokat", session=["sm-00017"], k=10)
        r.items[0].item_id, r.personalized
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from userlayer.sdk.api import (
    AdapterMetadata,
    ForgetResponse,
    Health,
    RecommendRequest,
    RecommendResponse,
    SignerRequest,
    SignerResponse,
)
from userlayer.sdk.exceptions import UserLayerError
from userlayer.sdk.schemas import Context, Service, describe_validation_error

__all__ = [
    "AsyncClient",
    "AuthError",
    "Client",
    "ClientError",
    "NotFoundError",
    "RequestError",
    "RetryPolicy",
    "UnavailableError",
]

M = TypeVar("M", bound=BaseModel)


class ClientError(UserLayerError):
    """Base of the client's errors; ``status`` is the HTTP status (0: no response)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class AuthError(ClientError):
    """The API key is missing, invalid, or may not do this (401/403)."""


class NotFoundError(ClientError):
    """Nothing there for this service (404)."""


class RequestError(ClientError):
    """The server refused the request as invalid (400/409/413/422): its message says why."""


class UnavailableError(ClientError):
    """The server is at capacity or unreachable, and stayed so through the retries."""


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts and backoff: attempt ``n`` waits up to ``base * 2**n`` (full jitter)."""

    attempts: int = 4
    base: float = 0.1
    max_backoff: float = 2.0
    max_wait: float = 30.0  # the longest Retry-After honoured

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base < 0 or self.max_backoff < 0 or self.max_wait < 0:
            raise ClientError("RetryPolicy needs attempts >= 1 and non-negative waits")

    def delay(self, attempt: int, retry_after: str | None, rng: random.Random) -> float:
        """Seconds to wait before attempt ``attempt + 1``."""
        backoff = rng.uniform(0, min(self.max_backoff, self.base * 2**attempt))
        if retry_after is not None:
            try:
                return min(self.max_wait, max(float(retry_after), backoff))
            except ValueError:
                pass
        return backoff


_RETRY_STATUS = (429, 503)


def _error(resp: httpx.Response) -> ClientError:
    try:
        detail = resp.json().get("detail", resp.text)
    except ValueError:
        detail = resp.text
    msg = f"{resp.request.method} {resp.request.url.path}: {resp.status_code} {detail}"
    s = resp.status_code
    if s in (401, 403):
        return AuthError(msg, s)
    if s == 404:
        return NotFoundError(msg, s)
    if s in _RETRY_STATUS:
        return UnavailableError(msg, s)
    if 400 <= s < 500:
        return RequestError(msg, s)
    return UnavailableError(msg, s)  # 5xx


def _parse(resp: httpx.Response, model: type[M]) -> M:
    if resp.status_code >= 400:
        raise _error(resp)
    return model.model_validate(resp.json())


def _params(service: Service | str | None) -> dict[str, str]:
    return {} if service is None else {"service": Service(service).value}


def _recommend_body(
    user_id: str,
    service: Service | str,
    session: Sequence[str],
    context: Context | None,
    k: int,
    exclude: Sequence[str],
) -> dict[str, Any]:
    try:
        req = RecommendRequest(
            user_id=user_id,
            service=Service(service),
            context=context or Context(),
            session=list(session),
            k=k,
            exclude=list(exclude),
        )
    except (ValidationError, ValueError) as e:
        what = describe_validation_error(e, "request") if isinstance(e, ValidationError) else e
        raise RequestError(str(what)) from e
    return req.model_dump(mode="json")


class _Base:
    def __init__(self, api_key: str, retry: RetryPolicy | None, seed: int | None) -> None:
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.retry = retry or RetryPolicy()
        self.rng = random.Random(seed)

    def _should_retry(self, attempt: int, resp: httpx.Response | None) -> bool:
        last = attempt + 1 >= self.retry.attempts
        return not last and (resp is None or resp.status_code in _RETRY_STATUS)


class Client(_Base):
    """Synchronous client (thread-safe: one httpx connection pool)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(api_key, retry, seed)
        self.http = httpx.Client(
            base_url=base_url, timeout=timeout, headers=self.headers, transport=transport
        )

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        for attempt in range(self.retry.attempts):
            try:
                resp = self.http.request(method, path, **kw)
            except httpx.TransportError as e:  # connection refused/reset, timeouts
                if not self._should_retry(attempt, None):
                    raise UnavailableError(f"{method} {path}: {e!r}") from e
                time.sleep(self.retry.delay(attempt, None, self.rng))
                continue
            if not self._should_retry(attempt, resp):
                return resp
            time.sleep(self.retry.delay(attempt, resp.headers.get("retry-after"), self.rng))
        raise AssertionError("unreachable")  # pragma: no cover

    def recommend(
        self,
        user_id: str,
        service: Service | str,
        session: Sequence[str] = (),
        context: Context | None = None,
        k: int = 10,
        exclude: Sequence[str] = (),
    ) -> RecommendResponse:
        """Top-``k`` items for the user in this context (their adapter if they have one)."""
        body = _recommend_body(user_id, service, session, context, k, exclude)
        return _parse(self._send("POST", "/v1/recommend", json=body), RecommendResponse)

    def enroll_signer(
        self, user_id: str, public_key: bytes, service: Service | str | None = None
    ) -> SignerResponse:
        """Enroll the user's Ed25519 public key (32 raw bytes) as their adapters' signer."""
        body = SignerRequest(public_key=public_key.hex()).model_dump()
        resp = self._send("PUT", f"/v1/users/{user_id}/signer", json=body, params=_params(service))
        return _parse(resp, SignerResponse)

    def upload_adapter(
        self, user_id: str, package: bytes, service: Service | str | None = None
    ) -> AdapterMetadata:
        """Upload a sealed adapter package; :class:`RequestError` says why one is refused."""
        resp = self._send(
            "PUT",
            f"/v1/users/{user_id}/adapter",
            content=package,
            headers={"Content-Type": "application/octet-stream"},
            params=_params(service),
        )
        return _parse(resp, AdapterMetadata)

    def adapter(self, user_id: str, service: Service | str | None = None) -> AdapterMetadata:
        """Metadata of the user's newest adapter (:class:`NotFoundError` if none)."""
        resp = self._send("GET", f"/v1/users/{user_id}/adapter", params=_params(service))
        return _parse(resp, AdapterMetadata)

    def forget(self, user_id: str, service: Service | str | None = None) -> ForgetResponse:
        """Forget the user in the cloud (every adapter version, key and cached copy)."""
        resp = self._send("DELETE", f"/v1/users/{user_id}", params=_params(service))
        return _parse(resp, ForgetResponse)

    def health(self) -> Health:
        """Liveness."""
        return _parse(self._send("GET", "/healthz"), Health)

    def ready(self) -> Health:
        """Readiness (:class:`UnavailableError` while not ready)."""
        return _parse(self._send("GET", "/readyz"), Health)

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """The same API for asyncio backends."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(api_key, retry, seed)
        self.http = httpx.AsyncClient(
            base_url=base_url, timeout=timeout, headers=self.headers, transport=transport
        )

    async def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        for attempt in range(self.retry.attempts):
            try:
                resp = await self.http.request(method, path, **kw)
            except httpx.TransportError as e:
                if not self._should_retry(attempt, None):
                    raise UnavailableError(f"{method} {path}: {e!r}") from e
                await asyncio.sleep(self.retry.delay(attempt, None, self.rng))
                continue
            if not self._should_retry(attempt, resp):
                return resp
            wait = self.retry.delay(attempt, resp.headers.get("retry-after"), self.rng)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    async def recommend(
        self,
        user_id: str,
        service: Service | str,
        session: Sequence[str] = (),
        context: Context | None = None,
        k: int = 10,
        exclude: Sequence[str] = (),
    ) -> RecommendResponse:
        """See :meth:`Client.recommend`."""
        body = _recommend_body(user_id, service, session, context, k, exclude)
        return _parse(await self._send("POST", "/v1/recommend", json=body), RecommendResponse)

    async def enroll_signer(
        self, user_id: str, public_key: bytes, service: Service | str | None = None
    ) -> SignerResponse:
        """See :meth:`Client.enroll_signer`."""
        body = SignerRequest(public_key=public_key.hex()).model_dump()
        resp = await self._send(
            "PUT", f"/v1/users/{user_id}/signer", json=body, params=_params(service)
        )
        return _parse(resp, SignerResponse)

    async def upload_adapter(
        self, user_id: str, package: bytes, service: Service | str | None = None
    ) -> AdapterMetadata:
        """See :meth:`Client.upload_adapter`."""
        resp = await self._send(
            "PUT",
            f"/v1/users/{user_id}/adapter",
            content=package,
            headers={"Content-Type": "application/octet-stream"},
            params=_params(service),
        )
        return _parse(resp, AdapterMetadata)

    async def adapter(self, user_id: str, service: Service | str | None = None) -> AdapterMetadata:
        """See :meth:`Client.adapter`."""
        resp = await self._send("GET", f"/v1/users/{user_id}/adapter", params=_params(service))
        return _parse(resp, AdapterMetadata)

    async def forget(self, user_id: str, service: Service | str | None = None) -> ForgetResponse:
        """See :meth:`Client.forget`."""
        resp = await self._send("DELETE", f"/v1/users/{user_id}", params=_params(service))
        return _parse(resp, ForgetResponse)

    async def health(self) -> Health:
        """Liveness."""
        return _parse(await self._send("GET", "/healthz"), Health)

    async def close(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
