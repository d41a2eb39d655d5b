"""The registry's errors, settings and records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from userlayer.cloud.exceptions import CloudError
from userlayer.sdk.adapter import MAX_VERSION

__all__ = [
    "MAX_VERSION",
    "MAX_VERSION_JUMP",
    "AdapterInfo",
    "EnrollmentError",
    "LoadedAdapter",
    "RegistryConfig",
    "RegistryError",
    "RejectedError",
    "StoreConfig",
    "StoreUnavailableError",
]

# versions are at most MAX_VERSION (the manifest's bound, far below BIGINT), and one
# upload may skip at most this many: no upload can exhaust the version space
MAX_VERSION_JUMP = 100_000  # a new version may skip at most this many


class RegistryError(CloudError):
    """Base of registry errors."""


class RejectedError(RegistryError):
    """A package was refused (the message says why); nothing was stored."""


class EnrollmentError(RegistryError):
    """A signer may not be enrolled or revoked as asked (the message says why)."""


class StoreUnavailableError(RegistryError):
    """The registry's database cannot be reached (or its circuit breaker is open)."""


@dataclass(frozen=True)
class StoreConfig:
    """How the registry talks to its database; validated on creation.

    PostgreSQL connections come from a pool, with a connect timeout, a server
    statement timeout, TCP keepalives and ``tcp_user_timeout`` (a dropped
    network fails a query after that long instead of hanging for minutes),
    and a circuit breaker: after ``breaker_failures`` failures in a row every
    call fails at once for ``breaker_cooldown_s``, then one is let through.
    """

    connect_timeout_s: float = 3.0
    statement_timeout_ms: int = 5000
    tcp_user_timeout_ms: int = 5000
    pool_size: int = 4
    pool_timeout_s: float = 3.0
    breaker_failures: int = 3
    breaker_cooldown_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("connect_timeout_s", "pool_timeout_s", "breaker_cooldown_s"):
            if not getattr(self, name) > 0:
                raise RegistryError(f"`{name}` should be positive, got {getattr(self, name)}")
        for name in (
            "statement_timeout_ms",
            "tcp_user_timeout_ms",
            "pool_size",
            "breaker_failures",
        ):
            if getattr(self, name) < 1:
                raise RegistryError(f"`{name}` should be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class RegistryConfig:
    """Registry limits and tiers; validated on creation."""

    cache_size: int = 4096  # unpacked adapters kept in RAM
    keep_versions: int = 3  # older versions are pruned on write
    max_package_bytes: int = 8 << 20
    max_norm: float = 1e3
    require_privacy: bool = False  # refuse packages without a DP record (or a seeded one)
    max_signers: int = 4  # per user and service
    shred_on_delete: bool = False  # rotate the KEK (and destroy the old) at every deletion

    def __post_init__(self) -> None:
        if self.cache_size < 0 or self.keep_versions < 1 or self.max_package_bytes < 1024:
            raise RegistryError(
                "`cache_size` >= 0, `keep_versions` >= 1 and `max_package_bytes` >= 1024 required"
            )
        if self.max_signers < 1:
            raise RegistryError(f"`max_signers` should be >= 1, got {self.max_signers}")


@dataclass(frozen=True)
class AdapterInfo:
    """Metadata of a stored version (never the tensors)."""

    service: str
    user_id: str
    version: int
    signer: str
    base_fingerprint: str
    created: str
    stored: str
    size: int
    sha256: str
    privacy: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class LoadedAdapter:
    """An unpacked, verified adapter (the cache tier)."""

    info: AdapterInfo
    tensors: dict[str, np.ndarray]
    favourites: tuple[str, ...] = ()  # the manifest's released favourite items

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data."""
        return sum(t.nbytes for t in self.tensors.values())
