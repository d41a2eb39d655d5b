"""The engine and the registry built from :class:`~userlayer.cloud.settings.Settings`.

Both the in-process API and the engine core process build them here, so a
setting means the same wherever it is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from userlayer.cloud.registry import AdapterRegistry, RegistryConfig, StoreConfig
from userlayer.cloud.settings import Settings
from userlayer.sdk.crypto import LocalKeyFile

if TYPE_CHECKING:
    from userlayer.cloud.engine.engine import Engine

__all__ = ["build_engine", "build_registry"]


def build_engine(s: Settings) -> Engine:
    """The base model on the configured backend, with ``s.slots`` adapter slots."""
    from userlayer.cloud.engine.engine import Engine, EngineConfig  # torch: engine side only

    return Engine(
        s.model_dir,
        EngineConfig(
            backend=s.backend,
            onnx_dir=None if s.onnx_dir is None else str(s.onnx_dir),
            beam=s.beam,
            ranking=s.ranking,
            slots=s.slots,
            threads=s.threads,
            device=s.device,
        ),
    )


def build_registry(
    s: Settings, fingerprint: str, shapes: Mapping[str, tuple[int, ...]]
) -> AdapterRegistry:
    """The adapter registry for the base ``fingerprint`` with adapter ``shapes``."""
    recipient = None
    if s.recipient_key_file is not None:
        raw = bytes.fromhex(Path(s.recipient_key_file).read_text().strip())
        recipient = X25519PrivateKey.from_private_bytes(raw)
    # an explicit KEK file must exist: a replica whose volume is not mounted must not make one
    keys = None if s.kek_file is None else LocalKeyFile(s.kek_file)
    return AdapterRegistry(
        s.registry,
        fingerprint,
        dict(shapes),
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
