"""A user's signers, adapters and erasure: ``/v1/users/{user_id}/...``.

Every registry call runs in a worker thread with a deadline (``in_store``): a
slow database never blocks the event loop, and a hung one is answered 503.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query, Request

from userlayer.cloud.api.deps import (
    EngineDep,
    Key,
    RegistryDep,
    UserId,
    in_store,
    is_admin,
    tenant,
)
from userlayer.cloud.api.errors import NotFoundError
from userlayer.cloud.exceptions import CloudError
from userlayer.cloud.registry import RejectedError
from userlayer.sdk.api import (
    ENDORSEMENT,
    AdapterMetadata,
    ForgetResponse,
    RevokeResponse,
    SignerRequest,
    SignerResponse,
    SignersResponse,
)
from userlayer.sdk.schemas import Service

log = logging.getLogger(__name__)

__all__ = ["router"]

router = APIRouter(prefix="/v1/users", tags=["adapters"])


@router.put("/{user_id}/signer", response_model=SignerResponse)
async def enroll(
    request: Request,
    user_id: UserId,
    body: SignerRequest,
    k: Key,
    registry: RegistryDep,
    service: Service | None = None,
) -> SignerResponse:
    """Enroll an Ed25519 key that signs this user's adapter packages.

    A user who has a signer needs the body's ``endorsement`` by it (or an admin key).
    """
    svc = tenant(k, "upload", service)
    kid = await in_store(
        request,
        registry.enroll,
        svc,
        user_id,
        bytes.fromhex(body.public_key),
        body.endorsement,
        is_admin(k),
    )
    return SignerResponse(key_id=kid)


@router.get("/{user_id}/signers", response_model=SignersResponse)
async def signers(
    request: Request, user_id: UserId, k: Key, registry: RegistryDep, service: Service | None = None
) -> SignersResponse:
    """The key ids of the user's signers."""
    svc = tenant(k, "upload", service)
    ids = await in_store(request, registry.signers.list, svc, user_id)
    return SignersResponse(user_id=user_id, service=Service(svc), key_ids=ids)


@router.delete("/{user_id}/signers/{key_id}", response_model=RevokeResponse)
async def revoke(
    request: Request,
    user_id: UserId,
    key_id: str,
    k: Key,
    registry: RegistryDep,
    service: Service | None = None,
    endorsement: Annotated[str | None, Query(pattern=ENDORSEMENT)] = None,
) -> RevokeResponse:
    """Revoke one of the user's signers, endorsed by one of them (or with an admin key)."""
    svc = tenant(k, "upload", service)
    if len(key_id) != 16 or not all(c in "0123456789abcdef" for c in key_id):
        raise NotFoundError(f"no signer {key_id[:20]!r}")
    done = await in_store(
        request, registry.signers.revoke, svc, user_id, key_id, endorsement, is_admin(k)
    )
    return RevokeResponse(key_id=key_id, revoked=done)


@router.put(
    "/{user_id}/adapter",
    response_model=AdapterMetadata,
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
    user_id: UserId,
    request: Request,
    k: Key,
    registry: RegistryDep,
    service: Service | None = None,
) -> AdapterMetadata:
    """Upload a sealed adapter package (verified before it is stored)."""
    svc = tenant(k, "upload", service)
    blob = await request.body()  # bounded by the BodyLimit middleware
    if not blob:
        raise RejectedError("empty body: send the package bytes as application/octet-stream")
    info = await in_store(request, registry.put, svc, user_id, blob)
    return AdapterMetadata(**info.to_dict())


@router.get("/{user_id}/adapter", response_model=AdapterMetadata)
async def adapter_info(
    request: Request, user_id: UserId, k: Key, registry: RegistryDep, service: Service | None = None
) -> AdapterMetadata:
    """Metadata of the user's newest adapter (never its tensors)."""
    svc = tenant(k, "recommend", service)
    info = await in_store(request, registry.info, svc, user_id)
    if info is None:
        raise NotFoundError(f"user {user_id} has no adapter in {svc}")
    return AdapterMetadata(**info.to_dict())


@router.delete("/{user_id}", response_model=ForgetResponse)
async def forget(
    request: Request,
    user_id: UserId,
    k: Key,
    registry: RegistryDep,
    engine: EngineDep,
    service: Service | None = None,
) -> ForgetResponse:
    """Forget the user in the cloud: every version, data key, signer, refusal, cached copy."""
    svc = tenant(k, "delete", service)
    n = await in_store(request, registry.delete_user, svc, user_id)
    try:  # the store no longer serves the user; drop the engine core's copy too
        await engine.evict(svc, user_id)
    except CloudError as e:  # a restarting core holds no slots; the next batch reads the store
        log.warning("could not evict %s/%s from the engine core: %s", svc, user_id, e)
    return ForgetResponse(user_id=user_id, service=Service(svc), deleted_versions=n)
