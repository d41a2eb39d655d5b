"""Settings of the inference API, from ``USERLAYER_*`` environment variables.

Secrets have no default. Outside ``USERLAYER_ENV=development`` the server
refuses to start with a placeholder admin key or without any API key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["PLACEHOLDER_SECRETS", "Settings"]

PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "change_me", "secret", "admin", "test", "password", "example"}
)


class Settings(BaseSettings):
    """Everything ``userlayer serve`` needs; see the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="USERLAYER_", extra="ignore", frozen=True)

    env: Literal["development", "production"] = "production"
    model_dir: Path
    onnx_dir: Path | None = None  # default: <model_dir>/onnx
    backend: Literal["onnxruntime", "torch", "tensorrt"] = "onnxruntime"
    device: str = "cpu"
    threads: int | None = Field(default=None, ge=1)
    registry: str = Field(description="SQLite file path or postgresql:// DSN")
    kek_file: Path | None = None  # default: next to a SQLite registry
    recipient_key_file: Path | None = None  # X25519 private key (hex) for sealed packages
    api_keys_file: Path | None = None
    admin_key: SecretStr | None = None  # a bootstrap admin key, ul_<id>_<secret>
    beam: int = Field(default=20, ge=1, le=200)
    # beam | dense | beam+dense | fused (a base with a dense item head); auto: what the
    # base's pretraining validated best where it has a head
    ranking: Literal["auto", "beam", "dense", "beam+dense", "fused"] = "auto"
    slots: int = Field(default=256, ge=1)
    cache_size: int = Field(default=4096, ge=0)
    max_batch: int = Field(default=64, ge=1, le=1024)
    max_wait_ms: float = Field(default=5.0, ge=0, le=1000)
    max_queue: int = Field(default=512, ge=1)
    max_body_bytes: int = Field(default=8 << 20, ge=1024)
    require_privacy: bool = False
    shred_on_delete: bool = False  # rotate the registry KEK at every deletion (O(users))
    store_connect_timeout_s: float = Field(default=3.0, gt=0)
    store_statement_timeout_ms: int = Field(default=5000, ge=1)
    store_pool_size: int = Field(default=4, ge=1)
    store_deadline_ms: int = Field(default=500, ge=1)  # longest a batch waits on the store
    store_call_timeout_ms: int = Field(default=3000, ge=1)  # uploads, enrollments, deletions
    metrics_public: bool = False  # /metrics without an admin key (private network only)
    docs_public: bool = False  # /docs and /openapi.json without an admin key
    keep_alive_s: int = Field(default=65, ge=1, le=3600)  # idle HTTP keep-alive (uvicorn: 5)
    rate_limit: float = Field(default=200.0, ge=0)  # requests/s per API key (0: off)
    rate_burst: int = Field(default=400, ge=1)  # bucket size per API key
    # `userlayer serve`: the engine in its own process (default) fed by `workers` API processes
    engine: Literal["process", "inline"] = "process"
    workers: int = Field(default=1, ge=1, le=64)
    engine_socket: Path | None = None  # set by `serve` for its workers; None: engine in-process
    engine_connect_timeout_s: float = Field(default=300.0, gt=0)

    def to_env(self) -> dict[str, str]:
        """These settings as ``USERLAYER_*`` variables (for a process that reads them back)."""
        out = {}
        for name, value in self:
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, bool):
                value = "true" if value else "false"
            out[f"USERLAYER_{name.upper()}"] = str(value)
        return out

    @model_validator(mode="after")
    def _secrets(self) -> Settings:
        if self.slots < self.max_batch:
            raise ValueError(
                f"slots ({self.slots}) must be at least max_batch ({self.max_batch}): "
                "a batch's adapters must fit in the engine at once"
            )
        if self.engine == "inline" and self.workers > 1:
            raise ValueError("workers above 1 need the engine in its own process (engine=process)")
        if self.env == "development":
            return self
        if self.admin_key is not None:
            secret = self.admin_key.get_secret_value()
            parts = secret.split("_", 2)
            if len(parts) != 3 or parts[0] != "ul":
                raise ValueError("USERLAYER_ADMIN_KEY should look like ul_<id>_<secret>")
            if parts[2].lower() in PLACEHOLDER_SECRETS or len(parts[2]) < 24:
                raise ValueError(
                    "USERLAYER_ADMIN_KEY is a placeholder or too short (24+ random "
                    "characters; `userlayer keys create` makes one); allowed only with "
                    "USERLAYER_ENV=development"
                )
        if self.admin_key is None and (
            self.api_keys_file is None or not self.api_keys_file.exists()
        ):
            raise ValueError("no API keys: set USERLAYER_API_KEYS_FILE or USERLAYER_ADMIN_KEY")
        return self
