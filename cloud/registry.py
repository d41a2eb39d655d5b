"""The adapter registry: sealed packages per (service, user), versioned, encrypted at rest.

Tiers, as in S-LoRA and vLLM's LoRA serving:

1. the *store*: one SQL database, SQLite in a directory (the embedded
   default) or PostgreSQL (several API replicas share it), holding every
   version's package encrypted under the user's own data key (AES-256-GCM,
   the key wrapped by a :class:`~userlayer.edge.keys.KeyProvider`);
2. an LRU *cache* of unpacked adapters in RAM (``cache_size`` entries);
3. the engine's fixed *slab* of slots (:class:`~userlayer.cloud.engine.engine.Slab`),
   which listeners registered with :meth:`AdapterRegistry.on_delete` clear.

Every package is verified on write: a signer enrolled for that very user
(:meth:`AdapterRegistry.enroll`), the base-model fingerprint, the user and
service, tensor names, shapes and dtypes, finite values and the norm bound,
and a version newer than the stored one. A refused package is logged with
its reason (``rejected``) and never stored. On read the package is
decrypted and verified again, so a store that was tampered with serves the
base model, not a wrong adapter. :meth:`AdapterRegistry.latest_version` is
one primary-key lookup: each request checks it, so a version uploaded to any
replica is served by the next request.

Deleting a user removes their packages, data key and signers in one
transaction and evicts them from every tier at once.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from userlayer.cloud.exceptions import CloudError
from userlayer.edge.exceptions import EdgeError
from userlayer.edge.keys import KeyProvider, LocalKeyFile, aead_decrypt, aead_encrypt
from userlayer.sdk.adapter import Expectation, key_id, open_package, unseal
from userlayer.sdk.exceptions import AdapterError

__all__ = [
    "AdapterInfo",
    "AdapterRegistry",
    "LoadedAdapter",
    "RegistryConfig",
    "RegistryError",
    "RejectedError",
    "StoreUnavailableError",
    "import_rounds",
]


class RegistryError(CloudError):
    """Base of registry errors."""


class RejectedError(RegistryError):
    """A package was refused (the message says why); nothing was stored."""


class StoreUnavailableError(RegistryError):
    """The registry's database cannot be reached."""


@dataclass(frozen=True)
class RegistryConfig:
    """Registry limits and tiers."""

    cache_size: int = 4096  # unpacked adapters kept in RAM
    keep_versions: int = 3  # older versions are pruned on write
    max_package_bytes: int = 8 << 20
    max_norm: float = 1e3
    require_privacy: bool = False  # refuse packages without a DP record

    def __post_init__(self) -> None:
        if self.cache_size < 0 or self.keep_versions < 1 or self.max_package_bytes < 1024:
            raise RegistryError(
                "`cache_size` >= 0, `keep_versions` >= 1 and `max_package_bytes` >= 1024 required"
            )


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

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data."""
        return sum(t.nbytes for t in self.tensors.values())


# --------------------------------------------------------------------- SQL store

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS ul_users (service TEXT NOT NULL, user_id TEXT NOT NULL,"
    " kek_id TEXT NOT NULL, dek {blob} NOT NULL, PRIMARY KEY (service, user_id))",
    "CREATE TABLE IF NOT EXISTS ul_adapters (service TEXT NOT NULL, user_id TEXT NOT NULL,"
    " version BIGINT NOT NULL, info TEXT NOT NULL, blob {blob} NOT NULL,"
    " PRIMARY KEY (service, user_id, version))",
    "CREATE TABLE IF NOT EXISTS ul_signers (key_id TEXT NOT NULL, service TEXT NOT NULL,"
    " user_id TEXT NOT NULL, public_key {blob} NOT NULL, PRIMARY KEY (key_id, service))",
    "CREATE INDEX IF NOT EXISTS ul_signers_user ON ul_signers (service, user_id)",
    "CREATE TABLE IF NOT EXISTS ul_rejected (ts TEXT NOT NULL, service TEXT NOT NULL,"
    " user_id TEXT NOT NULL, reason TEXT NOT NULL)",
]


class _Sql:
    """One connection (SQLite file or PostgreSQL DSN) behind a lock; ``?`` placeholders."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pg = url.startswith(("postgresql://", "postgres://"))
        self._lock = threading.RLock()
        self._conn: Any = None
        self._connect()
        with self.tx() as cur:
            for stmt in _SCHEMA:
                cur.execute(stmt.format(blob="BYTEA" if self.pg else "BLOB"))

    def _connect(self) -> None:
        try:
            if self.pg:
                import psycopg

                self._conn = psycopg.connect(self.url, connect_timeout=5)
            else:
                conn = sqlite3.connect(self.url, check_same_thread=False, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA busy_timeout=10000")
                self._conn = conn
        except Exception as e:  # sqlite3.Error, psycopg.Error
            raise StoreUnavailableError(f"cannot open the registry store: {e}") from e

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.pg else sql

    @contextmanager
    def tx(self) -> Iterator[Any]:
        """A transaction; reconnects once if the connection was lost."""
        with self._lock:
            try:
                if self._conn is None or (self.pg and self._conn.closed):
                    self._connect()
                cur = self._conn.cursor()
                if not self.pg:
                    cur.execute("BEGIN IMMEDIATE")
                try:
                    yield _Cursor(cur, self._q)
                except BaseException:
                    self._conn.rollback() if self.pg else cur.execute("ROLLBACK")
                    raise
                self._conn.commit() if self.pg else cur.execute("COMMIT")
            except (RegistryError, EdgeError, AdapterError):
                raise
            except Exception as e:
                if self.pg:
                    try:
                        self._conn.close()
                    finally:
                        self._conn = None
                raise StoreUnavailableError(f"registry store error: {e}") from e

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class _Cursor:
    def __init__(self, cur: Any, q: Callable[[str], str]) -> None:
        self.cur, self.q = cur, q

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> _Cursor:
        self.cur.execute(self.q(sql), args)
        return self

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self.cur.executemany(self.q(sql), rows)

    def fetchone(self) -> Any:
        return self.cur.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self.cur.fetchall())


# --------------------------------------------------------------------- registry


def _aad(*parts: object) -> bytes:
    return "|".join(str(p) for p in parts).encode()


class AdapterRegistry:
    """Verified, encrypted, versioned adapters with an LRU cache (see the module docstring).

    Args:
        url: a SQLite file path (``registry.db`` in a directory) or a
            ``postgresql://`` DSN.
        keys: wraps the users' data keys (default: ``<dir>/registry.keks``
            next to a SQLite file; required for PostgreSQL).
        base_fingerprint: the served base model; other packages are refused.
        shapes: the adapter tensor shapes the engine serves.
        recipient_key: the cloud's X25519 key, to open packages sealed to it.
    """

    def __init__(
        self,
        url: str | Path,
        base_fingerprint: str,
        shapes: Mapping[str, tuple[int, ...]],
        keys: KeyProvider | None = None,
        recipient_key: X25519PrivateKey | None = None,
        cfg: RegistryConfig | None = None,
    ) -> None:
        url = str(url)
        if keys is None:
            if url.startswith(("postgresql://", "postgres://")):
                raise RegistryError("a PostgreSQL registry needs an explicit key provider")
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            keys = LocalKeyFile(Path(url).with_suffix(".keks"), create=not Path(url).exists())
        self.keys = keys
        self.sql = _Sql(url)
        self.fingerprint = base_fingerprint
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self.recipient_key = recipient_key
        self.cfg = cfg or RegistryConfig()
        self._cache: OrderedDict[tuple[str, str], LoadedAdapter] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._on_delete: list[Callable[[str, str], None]] = []
        self.stats = {"hits": 0, "misses": 0, "loads": 0, "load_failures": 0}

    # -- signers

    def enroll(self, service: str, user_id: str, public_key: Ed25519PublicKey | bytes) -> str:
        """Trust ``public_key`` to sign this user's packages in ``service``; its key id.

        A key signs for one user per service (the same person may use it in
        several services, each enrolling it under its own tenant).

        Raises:
            RegistryError: if the key is already enrolled for another user.
        """
        return self.enroll_many([(service, user_id, public_key)])[0]

    def enroll_many(self, items: Sequence[tuple[str, str, Ed25519PublicKey | bytes]]) -> list[str]:
        """:meth:`enroll` for many users in one transaction (all or none)."""
        rows = []
        for service, user_id, public_key in items:
            pub = (
                public_key
                if isinstance(public_key, Ed25519PublicKey)
                else Ed25519PublicKey.from_public_bytes(bytes(public_key))
            )
            raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            rows.append((key_id(pub), service, user_id, raw))
        with self.sql.tx() as cur:
            for kid, service, user_id, raw in rows:
                row = cur.execute(
                    "SELECT user_id FROM ul_signers WHERE key_id = ? AND service = ?",
                    (kid, service),
                ).fetchone()
                if row and row[0] != user_id:
                    raise RegistryError(f"signer {kid} is enrolled for another user")
                if not row:
                    cur.execute(
                        "INSERT INTO ul_signers (key_id, service, user_id, public_key)"
                        " VALUES (?, ?, ?, ?)",
                        (kid, service, user_id, raw),
                    )
        return [r[0] for r in rows]

    def _signers(self, cur: _Cursor, service: str, user_id: str) -> dict[str, Ed25519PublicKey]:
        rows = cur.execute(
            "SELECT key_id, public_key FROM ul_signers WHERE service = ? AND user_id = ?",
            (service, user_id),
        ).fetchall()
        return {k: Ed25519PublicKey.from_public_bytes(bytes(p)) for k, p in rows}

    # -- write

    def _log_rejections(self, rejected: list[tuple[str, str, str]]) -> None:
        if not rejected:
            return
        now = datetime.now(UTC).isoformat()
        try:
            with self.sql.tx() as cur:
                cur.executemany(
                    "INSERT INTO ul_rejected (ts, service, user_id, reason) VALUES (?, ?, ?, ?)",
                    [(now, s, u, r[:500]) for s, u, r in rejected],
                )
        except StoreUnavailableError:
            pass

    def _dek(self, cur: _Cursor, service: str, user_id: str, create: bool) -> bytes | None:
        row = cur.execute(
            "SELECT kek_id, dek FROM ul_users WHERE service = ? AND user_id = ?",
            (service, user_id),
        ).fetchone()
        aad = _aad("userlayer.registry.dek", service, user_id)
        if row:
            return self.keys.unwrap(row[0], bytes(row[1]), aad)
        if not create:
            return None
        dek = secrets.token_bytes(32)
        kek_id, wrapped = self.keys.wrap(dek, aad)
        cur.execute(
            "INSERT INTO ul_users (service, user_id, kek_id, dek) VALUES (?, ?, ?, ?)",
            (service, user_id, kek_id, wrapped),
        )
        return dek

    def _expect(self, service: str, user_id: str) -> Expectation:
        return Expectation(
            base_fingerprint=self.fingerprint,
            user_id=user_id,
            service=service,
            shapes=self.shapes,
            max_norm=self.cfg.max_norm,
            max_tensor_bytes=self.cfg.max_package_bytes,
        )

    def put(self, service: str, user_id: str, blob: bytes) -> AdapterInfo:
        """Verify and store a new version of the user's adapter.

        Raises:
            RejectedError: the package failed verification (logged; nothing stored).
            StoreUnavailableError: the store cannot be reached.
        """
        out = self.put_many([(service, user_id, blob)])[0]
        if isinstance(out, RejectedError):
            raise out
        return out

    def _verify(
        self, service: str, user_id: str, blob: bytes, trusted: dict[str, Ed25519PublicKey]
    ) -> tuple[AdapterInfo, dict[str, np.ndarray], bytes]:
        if len(blob) > self.cfg.max_package_bytes:
            raise RejectedError(f"package of {len(blob)} bytes exceeds the limit")
        if not trusted:
            raise RejectedError("no signer is enrolled for this user")
        try:
            pkg = open_package(blob, trusted, self._expect(service, user_id), self.recipient_key)
        except AdapterError as e:
            raise RejectedError(str(e)) from e
        m = pkg.manifest
        if self.cfg.require_privacy and m.privacy is None:
            raise RejectedError("package has no differential-privacy record")
        if self.cfg.require_privacy and m.privacy is not None and not m.privacy.private:
            raise RejectedError(
                f"package's DP randomness is {m.privacy.rng!r}, not the OS CSPRNG: not private"
            )
        plain = unseal(blob, self.recipient_key)
        info = AdapterInfo(
            service=service,
            user_id=user_id,
            version=m.version,
            signer=m.signer,
            base_fingerprint=m.base_fingerprint,
            created=m.created,
            stored=datetime.now(UTC).isoformat(),
            size=len(plain),
            sha256=hashlib.sha256(plain).hexdigest(),
            privacy=None if m.privacy is None else m.privacy.to_dict(),
        )
        return info, pkg.tensors, plain

    def put_many(
        self, items: Sequence[tuple[str, str, bytes]]
    ) -> list[AdapterInfo | RejectedError]:
        """Verify and store many packages (a federated round's, a migration's).

        Each package is verified on its own; the valid ones are written in
        one transaction. Returns, per item, its stored metadata or the
        :class:`RejectedError` that refused it (refusals are logged).

        Raises:
            StoreUnavailableError: the store cannot be reached (nothing stored).
        """
        with self.sql.tx() as cur:
            trusted = {(s, u): self._signers(cur, s, u) for s, u, _ in items}
        out: list[AdapterInfo | RejectedError] = []
        ok: list[tuple[int, AdapterInfo, dict[str, np.ndarray], bytes]] = []
        for i, (service, user_id, blob) in enumerate(items):
            try:
                info, tensors, plain = self._verify(
                    service, user_id, blob, trusted[(service, user_id)]
                )
            except RejectedError as e:
                out.append(e)
                continue
            out.append(info)
            ok.append((i, info, tensors, plain))
        with self.sql.tx() as cur:
            for i, info, _, plain in ok:
                stale = self._store(cur, info, plain)
                if stale:
                    out[i] = RejectedError(stale)
        self._log_rejections(
            [
                (s, u, str(r))
                for (s, u, _), r in zip(items, out, strict=True)
                if isinstance(r, RejectedError)
            ]
        )
        with self._cache_lock:  # the next request is served the new version
            for i, info, tensors, _ in ok:
                if not isinstance(out[i], RejectedError):
                    key = (info.service, info.user_id)
                    self._cache[key] = LoadedAdapter(info, tensors)
                    self._cache.move_to_end(key)
            self._trim()
        return out

    def _store(self, cur: _Cursor, info: AdapterInfo, plain: bytes) -> str | None:
        """Write one verified version; returns why it is stale instead, if it is."""
        service, user_id, version = info.service, info.user_id, info.version
        row = cur.execute(
            "SELECT MAX(version) FROM ul_adapters WHERE service = ? AND user_id = ?",
            (service, user_id),
        ).fetchone()
        latest = row[0] if row and row[0] is not None else 0
        if version <= latest:
            return f"version {version} is not newer than the stored version {latest}"
        dek = self._dek(cur, service, user_id, create=True)
        assert dek is not None
        sealed = aead_encrypt(dek, plain, _aad("userlayer.registry", service, user_id, version))
        cur.execute(
            "INSERT INTO ul_adapters (service, user_id, version, info, blob)"
            " VALUES (?, ?, ?, ?, ?)",
            (service, user_id, version, json.dumps(info.to_dict()), sealed),
        )
        cur.execute(
            "DELETE FROM ul_adapters WHERE service = ? AND user_id = ? AND version <= ?",
            (service, user_id, version - self.cfg.keep_versions),
        )
        return None

    # -- read

    def latest_version(self, service: str, user_id: str) -> int | None:
        """The newest stored version (one primary-key lookup), or None."""
        with self.sql.tx() as cur:
            row = cur.execute(
                "SELECT MAX(version) FROM ul_adapters WHERE service = ? AND user_id = ?",
                (service, user_id),
            ).fetchone()
        return None if not row or row[0] is None else int(row[0])

    def info(self, service: str, user_id: str) -> AdapterInfo | None:
        """Metadata of the newest version, or None."""
        with self.sql.tx() as cur:
            row = cur.execute(
                "SELECT info FROM ul_adapters WHERE service = ? AND user_id = ?"
                " ORDER BY version DESC LIMIT 1",
                (service, user_id),
            ).fetchone()
        return None if not row else AdapterInfo(**json.loads(row[0]))

    def get(self, service: str, user_id: str) -> LoadedAdapter | None:
        """The newest version, verified and unpacked (from the cache when it is current).

        Returns None when the user has no adapter.

        Raises:
            RegistryError: the stored package cannot be decrypted or verified.
            StoreUnavailableError: the store cannot be reached.
        """
        key = (service, user_id)
        latest = self.latest_version(service, user_id)
        if latest is None:
            with self._cache_lock:
                self._cache.pop(key, None)
            return None
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None and hit.info.version == latest:
                self._cache.move_to_end(key)
                self.stats["hits"] += 1
                return hit
        self.stats["misses"] += 1
        loaded = self._load(service, user_id, latest)
        with self._cache_lock:
            self._cache[key] = loaded
            self._cache.move_to_end(key)
            self._trim()
        return loaded

    def _load(self, service: str, user_id: str, version: int) -> LoadedAdapter:
        self.stats["loads"] += 1
        try:
            with self.sql.tx() as cur:
                row = cur.execute(
                    "SELECT info, blob FROM ul_adapters WHERE service = ? AND user_id = ?"
                    " AND version = ?",
                    (service, user_id, version),
                ).fetchone()
                if row is None:
                    raise RegistryError(f"version {version} vanished (deleted meanwhile)")
                dek = self._dek(cur, service, user_id, create=False)
                trusted = self._signers(cur, service, user_id)
            if dek is None:
                raise RegistryError("the user's data key is gone")
            plain = aead_decrypt(
                AESGCM(dek),
                bytes(row[1]),
                _aad("userlayer.registry", service, user_id, version),
                f"adapter {service}/{user_id}/{version}",
            )
            pkg = open_package(plain, trusted, self._expect(service, user_id))
        except (EdgeError, AdapterError) as e:
            self.stats["load_failures"] += 1
            raise RegistryError(f"stored adapter does not verify: {e}") from e
        return LoadedAdapter(AdapterInfo(**json.loads(row[0])), pkg.tensors)

    def _trim(self) -> None:
        while len(self._cache) > self.cfg.cache_size:
            self._cache.popitem(last=False)

    # -- delete

    def on_delete(self, fn: Callable[[str, str], None]) -> None:
        """Call ``fn(service, user_id)`` when a user is deleted (engine slabs evict)."""
        self._on_delete.append(fn)

    def delete_user(self, service: str, user_id: str) -> int:
        """Forget the user: packages, data key, signers, cached copies; returns versions removed."""
        with self.sql.tx() as cur:
            n = cur.execute(
                "SELECT COUNT(*) FROM ul_adapters WHERE service = ? AND user_id = ?",
                (service, user_id),
            ).fetchone()[0]
            for table in ("ul_adapters", "ul_users", "ul_signers"):
                cur.execute(
                    f"DELETE FROM {table} WHERE service = ? AND user_id = ?",  # noqa: S608
                    (service, user_id),
                )
        with self._cache_lock:
            self._cache.pop((service, user_id), None)
        for fn in self._on_delete:
            fn(service, user_id)
        return int(n)

    # -- housekeeping

    def rejected(self, limit: int = 100) -> list[dict[str, str]]:
        """The most recent refusals (time, service, user, reason)."""
        with self.sql.tx() as cur:
            rows = cur.execute(
                "SELECT ts, service, user_id, reason FROM ul_rejected ORDER BY ts DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [dict(zip(("ts", "service", "user_id", "reason"), r, strict=True)) for r in rows]

    def users(self, service: str) -> list[str]:
        """Users of ``service`` with at least one stored version (administration, demos)."""
        with self.sql.tx() as cur:
            rows = cur.execute(
                "SELECT DISTINCT user_id FROM ul_adapters WHERE service = ? ORDER BY user_id",
                (service,),
            ).fetchall()
        return [r[0] for r in rows]

    def count_users(self) -> int:
        """Users with at least one stored version."""
        with self.sql.tx() as cur:
            return int(cur.execute("SELECT COUNT(*) FROM ul_users").fetchone()[0])

    def cached(self) -> int:
        """Adapters in the RAM tier."""
        return len(self._cache)

    def ping(self) -> float:
        """Seconds for a trivial query (readiness).

        Raises:
            StoreUnavailableError: the store cannot be reached.
        """
        t0 = time.perf_counter()
        with self.sql.tx() as cur:
            cur.execute("SELECT 1").fetchone()
        return time.perf_counter() - t0

    def close(self) -> None:
        """Close the store connection."""
        self.sql.close()


def import_rounds(
    registry: AdapterRegistry, rounds_root: str | Path, trust_dir: str | Path
) -> dict[str, int]:
    """Adopt what federated rounds wrote (``cloud/fl/registry_fs.py`` layout).

    For each (service, user) the newest package is verified against the
    rounds' enrolled keys (``trust_dir``), its signer is enrolled for that
    user here, and it is put through :meth:`AdapterRegistry.put_many`.
    Returns counts of ``stored``, ``refused`` and ``unknown_signer``.
    """
    from userlayer.cloud.fl.registry_fs import FileRegistry
    from userlayer.cloud.fl.rounds import load_trusted

    src = FileRegistry(rounds_root)
    trusted = load_trusted(trust_dir)
    items: list[tuple[str, str, bytes]] = []
    signers: list[tuple[str, str, Ed25519PublicKey]] = []
    unknown = 0
    for service_dir in sorted((Path(rounds_root) / "adapters").iterdir()):
        service = service_dir.name
        for user_id in src.users(service):
            blob = src.get(service, user_id)
            if blob is None:
                continue
            try:
                pkg = open_package(blob, trusted, None, registry.recipient_key)
            except AdapterError:
                unknown += 1
                continue
            signers.append((service, user_id, trusted[pkg.manifest.signer]))
            items.append((service, user_id, blob))
    if signers:
        registry.enroll_many(list(signers))
    out = registry.put_many(items) if items else []
    refused = sum(isinstance(o, RejectedError) for o in out)
    return {"stored": len(out) - refused, "refused": refused, "unknown_signer": unknown}
