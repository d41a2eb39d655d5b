"""The adapter registry: verified, encrypted, versioned user layers (see ``registry.py``)."""

from __future__ import annotations

from userlayer.cloud.registry.registry import AdapterRegistry
from userlayer.cloud.registry.signers import Signer, SignerBook
from userlayer.cloud.registry.store import SqlStore
from userlayer.cloud.registry.types import (
    MAX_VERSION,
    MAX_VERSION_JUMP,
    AdapterInfo,
    EnrollmentError,
    LoadedAdapter,
    RegistryConfig,
    RegistryError,
    RejectedError,
    StoreConfig,
    StoreUnavailableError,
)

__all__ = [
    "MAX_VERSION",
    "MAX_VERSION_JUMP",
    "AdapterInfo",
    "AdapterRegistry",
    "EnrollmentError",
    "LoadedAdapter",
    "RegistryConfig",
    "RegistryError",
    "RejectedError",
    "Signer",
    "SignerBook",
    "SqlStore",
    "StoreConfig",
    "StoreUnavailableError",
]
