"""API keys: one per service tenant (and admin), stored hashed, with scopes.

A key reads ``ul_<id>_<secret>``; the key file keeps only the id, the
tenant, the scopes and SHA-256 of the secret (the secret is 32 random
bytes, so a plain hash suffices; comparison is constant-time). A service's
key reaches only that service's users; ``admin`` reaches every service.
``userlayer keys create`` adds a key and prints the secret once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from userlayer.cloud.exceptions import CloudError

__all__ = [
    "ADMIN",
    "SCOPES",
    "ApiKey",
    "AuthError",
    "KeyStore",
    "RateLimitedError",
    "RateLimiter",
    "new_key",
]

SCOPES = ("recommend", "upload", "delete", "admin")
ADMIN = "admin"
TENANTS = ("samokat", "megamarket", "kuper", ADMIN)
_FORMAT = "userlayer.api-keys/1"


class AuthError(CloudError):
    """A missing, unknown or insufficient API key."""


@dataclass(frozen=True)
class ApiKey:
    """A key's record (never the secret)."""

    key_id: str
    tenant: str  # a service, or "admin"
    scopes: tuple[str, ...]
    digest: str  # sha256 of the secret, hex

    def allows(self, scope: str, service: str) -> bool:
        """True when this key may use ``scope`` on ``service``'s users."""
        tenant_ok = self.tenant == ADMIN or self.tenant == service
        return tenant_ok and (scope in self.scopes or "admin" in self.scopes)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key(tenant: str, scopes: tuple[str, ...]) -> tuple[str, ApiKey]:
    """A new key: (the full key to hand out, its record to store)."""
    if tenant not in TENANTS:
        raise AuthError(f"tenant should be one of {TENANTS}, got {tenant!r}")
    bad = sorted(set(scopes) - set(SCOPES))
    if bad or not scopes:
        raise AuthError(f"scopes should be a non-empty subset of {SCOPES}, got {sorted(scopes)}")
    kid = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return f"ul_{kid}_{secret}", ApiKey(kid, tenant, tuple(scopes), _digest(secret))


class KeyStore:
    """The hashed keys, from a JSON file (0600) or given directly."""

    def __init__(self, keys: list[ApiKey] | None = None, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.keys = {k.key_id: k for k in (keys or [])}
        if self.path is not None and self.path.exists():
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        try:
            doc = json.loads(self.path.read_text("utf-8"))
            if doc.get("format") != _FORMAT:
                raise ValueError(f"format should be {_FORMAT}")
            for k in doc["keys"]:
                key = ApiKey(k["key_id"], k["tenant"], tuple(k["scopes"]), k["digest"])
                self.keys[key.key_id] = key
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise AuthError(f"API key file {self.path} is unreadable: {e}") from e

    def add(self, tenant: str, scopes: tuple[str, ...]) -> str:
        """Create a key, save the file; returns the full key (shown once)."""
        full, rec = new_key(tenant, scopes)
        self.keys[rec.key_id] = rec
        self.save()
        return full

    def save(self) -> None:
        """Write the key file atomically with 0600 permissions."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "format": _FORMAT,
            "keys": [k.__dict__ | {"scopes": list(k.scopes)} for k in self.keys.values()],
        }
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".keys.")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def authenticate(self, presented: str | None) -> ApiKey:
        """The key record for a presented ``ul_<id>_<secret>``.

        Raises:
            AuthError: missing, malformed or unknown key (one message for all).
        """
        if not presented:
            raise AuthError("missing API key (header `Authorization: Bearer <key>`)")
        parts = presented.split("_", 2)
        rec = self.keys.get(parts[1]) if len(parts) == 3 and parts[0] == "ul" else None
        # compare even when the id is unknown, so timing does not tell ids apart
        digest = rec.digest if rec else "0" * 64
        ok = hmac.compare_digest(_digest(parts[-1]), digest)
        if rec is None or not ok:
            raise AuthError("invalid API key")
        return rec


class RateLimitedError(CloudError):
    """The key sent more requests than its rate; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limit of this API key exceeded; retry after {retry_after:.0f} s")
        self.retry_after = retry_after


class RateLimiter:
    """A token bucket per API key: ``rate`` requests per second, bursts up to ``burst``.

    ``rate`` 0 turns limiting off. Thread-safe; memory is one small entry per
    key that has been used.
    """

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate < 0 or burst < 1:
            raise CloudError("`rate` should be >= 0 and `burst` >= 1")
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, last time)
        self._lock = threading.Lock()

    def take(self, key_id: str) -> None:
        """Spend one token of ``key_id``'s bucket.

        Raises:
            RateLimitedError: the bucket is empty (with the wait for one token).
        """
        if self.rate == 0:
            return
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key_id, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key_id] = (tokens, now)
                raise RateLimitedError(max(1.0, math.ceil((1.0 - tokens) / self.rate)))
            self._buckets[key_id] = (tokens - 1.0, now)
