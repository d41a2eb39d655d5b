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
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from userlayer.sdk.api import (
    ID_PATTERN,
    AdapterMetadata,
    ForgetResponse,
    Health,
    RecommendRequest,
    RecommendResponse,
    RevokeResponse,
    SignerRequest,
    SignerResponse,
    SignersResponse,
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


def _params(service: Service | str | None, **extra: str | None) -> dict[str, str]:
    out = {} if service is None else {"service": Service(service).value}
    return out | {k: v for k, v in extra.items() if v is not None}


def _user(user_id: str, suffix: str = "") -> str:
    """The user's path, the id checked against the API's pattern and percent-quoted."""
    if not isinstance(user_id, str) or not re.fullmatch(ID_PATTERN, user_id):
        raise RequestError(f"user id {user_id!r} does not match {ID_PATTERN}")
    return f"/v1/users/{quote(user_id, safe='')}{suffix}"


@dataclass(frozen=True)
class _Call(Generic[M]):
    """One API call, the same for the sync and the async client."""

    method: str
    path: str
    model: type[M]
    kw: dict[str, Any] = field(default_factory=dict)


def _recommend(
    user_id: str,
    service: Service | str,
    session: Sequence[str],
    context: Context | None,
    k: int,
    exclude: Sequence[str],
    critique: str | None = None,
) -> _Call[RecommendResponse]:
    try:
        req = RecommendRequest(
            user_id=user_id,
            service=Service(service),
            context=context or Context(),
            session=list(session),
            k=k,
            exclude=list(exclude),
            critique=critique,
        )
    except (ValidationError, ValueError) as e:
        what = describe_validation_error(e, "request") if isinstance(e, ValidationError) else e
        raise RequestError(str(what)) from e
    return _Call("POST", "/v1/recommend", RecommendResponse, {"json": req.model_dump(mode="json")})


def _enroll(
    user_id: str, public_key: bytes, service: Service | str | None, endorsement: str | None
) -> _Call[SignerResponse]:
    body = SignerRequest(public_key=public_key.hex(), endorsement=endorsement).model_dump()
    kw = {"json": body, "params": _params(service)}
    return _Call("PUT", _user(user_id, "/signer"), SignerResponse, kw)


def _signers(user_id: str, service: Service | str | None) -> _Call[SignersResponse]:
    return _Call("GET", _user(user_id, "/signers"), SignersResponse, {"params": _params(service)})


def _revoke(
    user_id: str, key_id: str, service: Service | str | None, endorsement: str | None
) -> _Call[RevokeResponse]:
    if not re.fullmatch(r"[0-9a-f]{16}", key_id):
        raise RequestError(f"key id {key_id!r} is not 16 hex characters")
    kw = {"params": _params(service, endorsement=endorsement)}
    return _Call("DELETE", _user(user_id, f"/signers/{key_id}"), RevokeResponse, kw)


def _upload(user_id: str, package: bytes, service: Service | str | None) -> _Call[AdapterMetadata]:
    kw = {
        "content": package,
        "headers": {"Content-Type": "application/octet-stream"},
        "params": _params(service),
    }
    return _Call("PUT", _user(user_id, "/adapter"), AdapterMetadata, kw)


def _adapter(user_id: str, service: Service | str | None) -> _Call[AdapterMetadata]:
    return _Call("GET", _user(user_id, "/adapter"), AdapterMetadata, {"params": _params(service)})


def _forget(user_id: str, service: Service | str | None) -> _Call[ForgetResponse]:
    return _Call("DELETE", _user(user_id), ForgetResponse, {"params": _params(service)})


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

    def _call(self, c: _Call[M]) -> M:
        return _parse(self._send(c.method, c.path, **c.kw), c.model)

    def recommend(
        self,
        user_id: str,
        service: Service | str,
        session: Sequence[str] = (),
        context: Context | None = None,
        k: int = 10,
        exclude: Sequence[str] = (),
        critique: str | None = None,
    ) -> RecommendResponse:
        """Top-``k`` items for the user in this context (their adapter if they have one).

        ``critique``: the user's short reaction to the session's last item, in
        Russian or English ("подешевле", "без мяса", "another brand"): no
        returned item violates its hard constraints; how it was understood is
        in the response's ``critique`` (ignored parts are flagged there).
        """
        return self._call(_recommend(user_id, service, session, context, k, exclude, critique))

    def enroll_signer(
        self,
        user_id: str,
        public_key: bytes,
        service: Service | str | None = None,
        endorsement: str | None = None,
    ) -> SignerResponse:
        """Enroll the user's Ed25519 public key (32 raw bytes) as a signer of their adapters.

        A user who has a signer needs ``endorsement`` by it
        (:func:`userlayer.sdk.signers.endorse` of ``enrollment_message``).
        """
        return self._call(_enroll(user_id, public_key, service, endorsement))

    def signers(self, user_id: str, service: Service | str | None = None) -> SignersResponse:
        """The key ids of the user's signers."""
        return self._call(_signers(user_id, service))

    def revoke_signer(
        self,
        user_id: str,
        key_id: str,
        service: Service | str | None = None,
        endorsement: str | None = None,
    ) -> RevokeResponse:
        """Revoke a signer, endorsed by one of the user's signers (``revocation_message``)."""
        return self._call(_revoke(user_id, key_id, service, endorsement))

    def upload_adapter(
        self, user_id: str, package: bytes, service: Service | str | None = None
    ) -> AdapterMetadata:
        """Upload a sealed adapter package; :class:`RequestError` says why one is refused."""
        return self._call(_upload(user_id, package, service))

    def adapter(self, user_id: str, service: Service | str | None = None) -> AdapterMetadata:
        """Metadata of the user's newest adapter (:class:`NotFoundError` if none)."""
        return self._call(_adapter(user_id, service))

    def forget(self, user_id: str, service: Service | str | None = None) -> ForgetResponse:
        """Forget the user in the cloud (every adapter version, key and cached copy)."""
        return self._call(_forget(user_id, service))

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

    async def _call(self, c: _Call[M]) -> M:
        return _parse(await self._send(c.method, c.path, **c.kw), c.model)

    async def recommend(
        self,
        user_id: str,
        service: Service | str,
        session: Sequence[str] = (),
        context: Context | None = None,
        k: int = 10,
        exclude: Sequence[str] = (),
        critique: str | None = None,
    ) -> RecommendResponse:
        """See :meth:`Client.recommend`."""
        return await self._call(
            _recommend(user_id, service, session, context, k, exclude, critique)
        )

    async def enroll_signer(
        self,
        user_id: str,
        public_key: bytes,
        service: Service | str | None = None,
        endorsement: str | None = None,
    ) -> SignerResponse:
        """See :meth:`Client.enroll_signer`."""
        return await self._call(_enroll(user_id, public_key, service, endorsement))

    async def signers(self, user_id: str, service: Service | str | None = None) -> SignersResponse:
        """See :meth:`Client.signers`."""
        return await self._call(_signers(user_id, service))

    async def revoke_signer(
        self,
        user_id: str,
        key_id: str,
        service: Service | str | None = None,
        endorsement: str | None = None,
    ) -> RevokeResponse:
        """See :meth:`Client.revoke_signer`."""
        return await self._call(_revoke(user_id, key_id, service, endorsement))

    async def upload_adapter(
        self, user_id: str, package: bytes, service: Service | str | None = None
    ) -> AdapterMetadata:
        """See :meth:`Client.upload_adapter`."""
        return await self._call(_upload(user_id, package, service))

    async def adapter(self, user_id: str, service: Service | str | None = None) -> AdapterMetadata:
        """See :meth:`Client.adapter`."""
        return await self._call(_adapter(user_id, service))

    async def forget(self, user_id: str, service: Service | str | None = None) -> ForgetResponse:
        """See :meth:`Client.forget`."""
        return await self._call(_forget(user_id, service))

    async def health(self) -> Health:
        """Liveness."""
        return _parse(await self._send("GET", "/healthz"), Health)

    async def ready(self) -> Health:
        """See :meth:`Client.ready`."""
        return _parse(await self._send("GET", "/readyz"), Health)

    async def close(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
