"""The adapter registry: sealed packages per (service, user), versioned, encrypted at rest.

Tiers, as in S-LoRA and vLLM's LoRA serving:

1. the *store*: one SQL database (:mod:`userlayer.cloud.registry.store`),
   SQLite in a directory (the embedded default) or PostgreSQL (several API
   replicas share it), holding every version's package encrypted under the
   user's own data key (AES-256-GCM, the key wrapped by a
   :class:`~userlayer.sdk.crypto.KeyProvider`);
2. an LRU *cache* of unpacked adapters in RAM (``cache_size`` entries);
3. the engine's fixed *slab* of slots, which listeners registered with
   :meth:`AdapterRegistry.on_delete` clear.

Every package is verified on write: a signer enrolled for that very user
(:mod:`userlayer.cloud.registry.signers`), the base-model fingerprint, the
user and service, tensor names, shapes and dtypes, finite values and the norm
bound, and a version newer than the stored one (and at most
``MAX_VERSION_JUMP`` newer, below ``MAX_VERSION``). The write transaction
checks again that the signer's enrollment still exists (a row lock on
PostgreSQL), so an upload racing a deletion cannot bring the user back. A
refused package is logged with its reason and never stored. On read the
package is decrypted and verified again, so a store that was tampered with
serves the base model, not a wrong adapter.

Caches are keyed by the package's SHA-256, never by the version alone: every
request reads the newest (version, hash) from the store, so a user deleted
through another replica is served the base model at the next request, and a
returning user whose new adapter reuses an old version number never gets
the old one from a cache or an engine slot.

Deleting a user removes their packages, data key, signers and refusal log in
one transaction and evicts them from every tier at once. Retention: the
deleted rows are gone from the live database at once (``secure_delete`` and a
WAL checkpoint on SQLite); a backup taken before still holds the user's
wrapped data key, which the registry's KEK can unwrap until that KEK is
rotated away. :meth:`AdapterRegistry.rotate_kek` (``userlayer keys
rotate-registry``, run daily) or ``RegistryConfig.shred_on_delete`` (a
rotation at every deletion; it re-wraps every user's key) destroys it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from userlayer.cloud.registry.signers import Signer, SignerBook
from userlayer.cloud.registry.store import Cursor, SqlStore
from userlayer.cloud.registry.types import (
    MAX_VERSION_JUMP,
    AdapterInfo,
    LoadedAdapter,
    RegistryConfig,
    RegistryError,
    RejectedError,
    StoreConfig,
    StoreUnavailableError,
)
from userlayer.sdk.adapter import Expectation, open_package, unseal
from userlayer.sdk.crypto import KeyProvider, LocalKeyFile, aead_decrypt, aead_encrypt
from userlayer.sdk.exceptions import AdapterError, CryptoError

__all__ = ["AdapterRegistry"]


def _aad(*parts: object) -> bytes:
    return "|".join(str(p) for p in parts).encode()


class AdapterRegistry:
    """Verified, encrypted, versioned adapters with an LRU cache (see the module docstring).

    Args:
        url: a SQLite file path (``registry.db`` in a directory) or a
            ``postgresql://`` DSN (connected lazily: the registry is made while
            the database is down, and every call then fails fast).
        base_fingerprint: the served base model; other packages are refused.
        shapes: the adapter tensor shapes the engine serves.
        keys: wraps the users' data keys (default: ``<dir>/registry.keks``
            next to a SQLite file, made with a new database; required for PostgreSQL).
        recipient_key: the cloud's X25519 key, to open packages sealed to it.
        cfg: limits and tiers.
        store: database timeouts, pool and circuit breaker.
    """

    def __init__(
        self,
        url: str | Path,
        base_fingerprint: str,
        shapes: Mapping[str, tuple[int, ...]],
        keys: KeyProvider | None = None,
        recipient_key: X25519PrivateKey | None = None,
        cfg: RegistryConfig | None = None,
        store: StoreConfig | None = None,
    ) -> None:
        url = str(url)
        if keys is None:
            if url.startswith(("postgresql://", "postgres://")):
                raise RegistryError("a PostgreSQL registry needs an explicit key provider")
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            keys = LocalKeyFile(Path(url).with_suffix(".keks"), create=not Path(url).exists())
        self.keys = keys
        self.cfg = cfg or RegistryConfig()
        self.sql = SqlStore(url, store)
        self.signers = SignerBook(self.sql, self.cfg)
        self.fingerprint = base_fingerprint
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self.recipient_key = recipient_key
        self._cache: OrderedDict[tuple[str, str], LoadedAdapter] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._on_delete: list[Callable[[str, str], None]] = []
        self.stats = {"hits": 0, "misses": 0, "loads": 0, "load_failures": 0}

    # -- signers

    def enroll(
        self,
        service: str,
        user_id: str,
        public_key: Ed25519PublicKey | bytes,
        endorsement: str | None = None,
        admin: bool = False,
    ) -> str:
        """Trust ``public_key`` to sign this user's packages in ``service``; its key id.

        Raises:
            EnrollmentError: see :mod:`userlayer.cloud.registry.signers`.
        """
        return self.signers.enroll_many([(service, user_id, public_key)], endorsement, admin)[0]

    def enroll_many(
        self, items: Sequence[tuple[str, str, Ed25519PublicKey | bytes]], admin: bool = False
    ) -> list[str]:
        """:meth:`enroll` for many users in one transaction (all or none)."""
        return self.signers.enroll_many(items, admin=admin)

    # -- write

    def log_rejection(self, service: str, user_id: str, reason: str) -> None:
        """Record a refusal decided elsewhere (a federated reply); deleted with the user."""
        self._log_rejections([(service, user_id, reason)])

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

    def _dek(self, cur: Cursor, service: str, user_id: str, create: bool) -> bytes | None:
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
        self, service: str, user_id: str, blob: bytes, signers: dict[str, Signer]
    ) -> tuple[LoadedAdapter, bytes, Signer]:
        if len(blob) > self.cfg.max_package_bytes:
            raise RejectedError(f"package of {len(blob)} bytes exceeds the limit")
        if not signers:
            raise RejectedError("no signer is enrolled for this user")
        trusted = {k: s.public_key for k, s in signers.items()}
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
        if m.favourites and (
            m.privacy is None
            or m.privacy.mechanism not in ("profile", "profile+dp-sgd")
            or not m.privacy.favourites_noise > 0
        ):  # favourites name items: only a release that noised their counts may carry them
            raise RejectedError(
                "package carries favourites without a DP release of them (mechanism profile "
                "or profile+dp-sgd with favourites_noise > 0)"
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
        return LoadedAdapter(info, pkg.tensors, m.favourites), plain, signers[m.signer]

    def verify(self, service: str, user_id: str, blob: bytes) -> AdapterInfo:
        """Verify a package as :meth:`put` would, against the user's enrolled signers.

        Nothing is stored or logged.

        Raises:
            RejectedError: what :meth:`put` would refuse it for.
            StoreUnavailableError: the store cannot be reached.
        """
        with self.sql.tx() as cur:
            signers = self.signers.of(cur, service, user_id)
        return self._verify(service, user_id, blob, signers)[0].info

    def discard(self, service: str, user_id: str, version: int, sha256: str) -> bool:
        """Remove one stored version if it is still the package with ``sha256``.

        A federated server that died after storing a round's packages but
        before its checkpoint discards them when it runs the round again.
        """
        with self.sql.tx() as cur:
            row = cur.execute(
                "SELECT info FROM ul_adapters WHERE service = ? AND user_id = ? AND version = ?",
                (service, user_id, version),
            ).fetchone()
            if row is None or json.loads(row[0]).get("sha256") != sha256:
                return False
            cur.execute(
                "DELETE FROM ul_adapters WHERE service = ? AND user_id = ? AND version = ?",
                (service, user_id, version),
            )
        with self._cache_lock:
            self._cache.pop((service, user_id), None)
        return True

    def put_many(
        self, items: Sequence[tuple[str, str, bytes]]
    ) -> list[AdapterInfo | RejectedError]:
        """Verify and store many packages (a federated round's, a migration's).

        Each package is verified on its own; the valid ones are written in
        one transaction, each only if the enrollment that verified it still
        exists. Returns, per item, its stored metadata or the
        :class:`RejectedError` that refused it (refusals are logged).

        Raises:
            StoreUnavailableError: the store cannot be reached (nothing stored).
        """
        with self.sql.tx() as cur:
            signers = {(s, u): self.signers.of(cur, s, u) for s, u, _ in items}
        out: list[AdapterInfo | RejectedError] = []
        ok: list[tuple[int, LoadedAdapter, bytes, Signer]] = []
        for i, (service, user_id, blob) in enumerate(items):
            try:
                loaded, plain, signer = self._verify(
                    service, user_id, blob, signers[(service, user_id)]
                )
            except RejectedError as e:
                out.append(e)
                continue
            out.append(loaded.info)
            ok.append((i, loaded, plain, signer))
        with self.sql.tx() as cur:
            for i, loaded, plain, signer in ok:
                why = self._store(cur, loaded.info, plain, signer)
                if why:
                    out[i] = RejectedError(why)
        self._log_rejections(
            [
                (s, u, str(r))
                for (s, u, _), r in zip(items, out, strict=True)
                if isinstance(r, RejectedError)
            ]
        )
        with self._cache_lock:  # the next request is served the new version
            for i, loaded, _, _ in ok:
                if not isinstance(out[i], RejectedError):
                    key = (loaded.info.service, loaded.info.user_id)
                    self._cache[key] = loaded
                    self._cache.move_to_end(key)
            self._trim()
        return out

    def _store(self, cur: Cursor, info: AdapterInfo, plain: bytes, signer: Signer) -> str | None:
        """Write one verified version; returns why it cannot be, if it cannot."""
        service, user_id, version = info.service, info.user_id, info.version
        self.sql.lock_user(cur, service, user_id)
        if not self.signers.still(cur, service, user_id, signer):
            return "the user was deleted or the signer revoked while the package was verified"
        row = cur.execute(
            "SELECT MAX(version) FROM ul_adapters WHERE service = ? AND user_id = ?",
            (service, user_id),
        ).fetchone()
        latest = row[0] if row and row[0] is not None else 0
        if version <= latest:
            return f"version {version} is not newer than the stored version {latest}"
        if version > latest + MAX_VERSION_JUMP:
            return f"version {version} jumps more than {MAX_VERSION_JUMP} past {latest}"
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

    def latest(self, service: str, user_id: str) -> tuple[int, str] | None:
        """The newest stored (version, package SHA-256), or None: what each request checks."""
        with self.sql.tx() as cur:
            row = cur.execute(
                "SELECT version, info FROM ul_adapters WHERE service = ? AND user_id = ?"
                " ORDER BY version DESC LIMIT 1",
                (service, user_id),
            ).fetchone()
        return None if not row else (int(row[0]), str(json.loads(row[1])["sha256"]))

    def latest_version(self, service: str, user_id: str) -> int | None:
        """The newest stored version, or None."""
        got = self.latest(service, user_id)
        return None if got is None else got[0]

    def versions(self, service: str, user_id: str) -> list[int]:
        """Every stored version of the user's adapter, oldest first."""
        with self.sql.tx() as cur:
            rows = cur.execute(
                "SELECT version FROM ul_adapters WHERE service = ? AND user_id = ?"
                " ORDER BY version",
                (service, user_id),
            ).fetchall()
        return [int(r[0]) for r in rows]

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
        """The newest version, verified and unpacked (from the cache when it is that package).

        Returns None when the user has no adapter.

        Raises:
            RegistryError: the stored package cannot be decrypted or verified.
            StoreUnavailableError: the store cannot be reached.
        """
        key = (service, user_id)
        latest = self.latest(service, user_id)
        if latest is None:
            with self._cache_lock:
                self._cache.pop(key, None)
            return None
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None and (hit.info.version, hit.info.sha256) == latest:
                self._cache.move_to_end(key)
                self.stats["hits"] += 1
                return hit
        self.stats["misses"] += 1
        loaded = self._load(service, user_id, latest[0])
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
                trusted = {
                    k: s.public_key for k, s in self.signers.of(cur, service, user_id).items()
                }
            if dek is None:
                raise RegistryError("the user's data key is gone")
            plain = aead_decrypt(
                AESGCM(dek),
                bytes(row[1]),
                _aad("userlayer.registry", service, user_id, version),
                f"adapter {service}/{user_id}/{version}",
            )
            pkg = open_package(plain, trusted, self._expect(service, user_id))
        except (CryptoError, AdapterError) as e:
            self.stats["load_failures"] += 1
            raise RegistryError(f"stored adapter does not verify: {e}") from e
        info = AdapterInfo(**json.loads(row[0]))
        return LoadedAdapter(info, pkg.tensors, pkg.manifest.favourites)

    def _trim(self) -> None:
        while len(self._cache) > self.cfg.cache_size:
            self._cache.popitem(last=False)

    # -- delete

    def forget_cached(self, service: str, user_id: str) -> None:
        """Drop the user's unpacked adapter from the RAM tier (deleted through another process)."""
        with self._cache_lock:
            self._cache.pop((service, user_id), None)

    def on_delete(self, fn: Callable[[str, str], None]) -> None:
        """Call ``fn(service, user_id)`` when a user is deleted (engine slabs evict)."""
        self._on_delete.append(fn)

    def delete_user(self, service: str, user_id: str) -> int:
        """Forget the user: packages, data key, signers, refusal log, cached copies.

        With ``shred_on_delete`` the KEK is rotated and the old one destroyed,
        so no backup can unwrap the deleted data key either. Returns the number
        of versions removed.
        """
        with self.sql.tx() as cur:
            self.sql.lock_user(cur, service, user_id)
            n = cur.execute(
                "SELECT COUNT(*) FROM ul_adapters WHERE service = ? AND user_id = ?",
                (service, user_id),
            ).fetchone()[0]
            for table in ("ul_adapters", "ul_users", "ul_signers", "ul_rejected", "ul_revoked"):
                cur.execute(
                    f"DELETE FROM {table} WHERE service = ? AND user_id = ?",  # noqa: S608
                    (service, user_id),
                )
        self.forget_cached(service, user_id)
        self.sql.checkpoint()
        if self.cfg.shred_on_delete:
            self.rotate_kek(destroy_old=True)
        for fn in self._on_delete:
            fn(service, user_id)
        return int(n)

    def rotate_kek(self, destroy_old: bool = False) -> str:
        """Re-wrap every user's data key under a new KEK; returns its id.

        With ``destroy_old`` every other KEK the provider holds is destroyed
        once nothing is wrapped under it, inside a write transaction that first
        blocks new keys (PostgreSQL: a table lock) and re-wraps any a late writer
        made under an old KEK.
        """
        new = self.keys.rotate()
        with self.sql.tx() as cur:
            self._rewrap(cur, new)
        self.sql.checkpoint()
        if destroy_old:
            with self.sql.tx() as cur:
                self.sql.lock_keys(cur)
                current = self.keys.current_id
                self._rewrap(cur, current)
                used = {
                    r[0] for r in cur.execute("SELECT DISTINCT kek_id FROM ul_users").fetchall()
                }
                for kid in set(getattr(self.keys, "key_ids", ())) - used - {current}:
                    self.keys.destroy(kid)
        return new

    def _rewrap(self, cur: Cursor, current: str) -> None:
        rows = cur.execute(
            "SELECT service, user_id, kek_id, dek FROM ul_users WHERE kek_id != ?", (current,)
        ).fetchall()
        for service, user_id, kek_id, wrapped in rows:
            aad = _aad("userlayer.registry.dek", service, user_id)
            dek = self.keys.unwrap(kek_id, bytes(wrapped), aad)
            kid, w = self.keys.wrap(dek, aad)
            cur.execute(
                "UPDATE ul_users SET kek_id = ?, dek = ? WHERE service = ? AND user_id = ?",
                (kid, w, service, user_id),
            )

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
