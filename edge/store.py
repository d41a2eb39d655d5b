"""The encrypted profile store: a user's events, readable only with their data key.

Embedded default: one SQLite file in WAL mode. Concurrent writers (threads
or processes, several backend workers) each open their own
:class:`ProfileStore`; SQLite serialises the write transactions and an
append is acknowledged only after its commit.

A service backend holding many users' profiles gives a ``postgresql://`` URL
instead: the same tables, wire format and keys, in their own schema
(:mod:`userlayer.edge.store_db`). Appends and reads of any number of
instances run side by side there; a forget or a KEK rotation runs alone
(an advisory lock, shared by the ones and exclusive for the other). Two
writers making the same user's first key keep one (``ON CONFLICT``).
PostgreSQL has no ``secure_delete``: a forgotten user's rows stay in the
table's free space until it is vacuumed and reused, and in its WAL until
that is recycled, but they are ciphertext under a data key whose wrapping
KEK is destroyed once the forget's KEK rotation has run, so the
crypto-shredding below holds all the same (a rotation a crash or a provider
error interrupted is marked pending and finished by the next open).

Layout and wire format (schema ``userlayer.profile/2``; on PostgreSQL BLOB is
BYTEA and ``seq`` an identity column)::

    meta(key TEXT PRIMARY KEY, value BLOB)
        "format"      -> b"userlayer.profile/2"
        "generation"  -> a counter, bumped by every forget and KEK rotation
        "index_key"   -> kek_id, newline, wrapped 32-byte HMAC key (AAD b"userlayer.index/1");
                         replaced by a new random one at every forget
        "ledger_key"  -> kek_id, newline, wrapped 32-byte key of the privacy ledger's
                         pseudonyms (AAD b"userlayer.ledger-key/1"; made on first use)
    deks(user_ref BLOB PRIMARY KEY, kek_id TEXT, wrapped BLOB, uid BLOB)
        user_ref = HMAC-SHA256(index_key, user_id)[:16]   (no user id in clear)
        wrapped  = the user's AES-256 DEK wrapped by the KeyProvider
                   (AAD b"userlayer.dek/1|" + user_ref)
        uid      = AES-GCM(index_key, user_id, AAD b"userlayer.uid/1|" + user_ref)
    events(seq INTEGER PRIMARY KEY, rid BLOB UNIQUE, user_ref BLOB, service TEXT, blob BLOB)
        rid  = 16 random bytes made here (the record id)
        blob = 0x01 || nonce(12, random, made here) || AES-256-GCM(DEK, payload) || tag(16)
        AAD  = b"userlayer.profile/1|" service "|" user_id "|" rid "|1"
        payload = compact JSON list: [item_id, action, ts_ms, quantity, price,
                  mode, daypart, weekday, season, weather, geo_cell]
    settings(user_ref BLOB, name TEXT, blob BLOB)   (per-user settings, e.g. consent)
        blob = nonce(12) || AES-256-GCM(DEK, JSON object) || tag(16)
        AAD  = b"userlayer.profile/1|setting|" user_id "|" name "|1"
    signing_keys(user_ref BLOB PRIMARY KEY, blob BLOB)   (the user's Ed25519 key)
        blob = nonce(12) || AES-256-GCM(DEK, raw 32-byte private key) || tag(16)
        AAD  = b"userlayer.profile/1|signing-key|" user_id "|1"

So a ciphertext copied to another user, record or service fails to decrypt.
Only the service name, the pseudonymous user reference and the row order are
stored in clear; event times, items, prices and context are encrypted. Format
1 stores are upgraded in place when opened (the new tables are added).

``forget(user)`` deletes the user's rows, settings, signing key and wrapped
DEK with SQLite's ``secure_delete`` on, then replaces the index key (every
other user's reference is recomputed), so an old copy of the file can no
longer be linked to anyone through the current key, checkpoints the WAL, and
rotates the KEK, destroying the old one: a copy of the file taken before
still holds the user's wrapped DEK, but nothing can unwrap it any more
(crypto-shredding). Rotation re-wraps the other users' DEKs (one AES
operation each), never re-encrypts events; a KEK is destroyed only inside a
write transaction that finds no key still wrapped under it. Other store
instances on the same file notice the new generation before their next
operation and drop every cached key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from userlayer.edge.exceptions import KeyProviderError, ProfileDecryptError, StoreError
from userlayer.edge.store_db import TABLES, StoreDb, TxMode, is_postgres_url, open_db
from userlayer.sdk.crypto import KeyProvider, LocalKeyFile, aead_decrypt, aead_encrypt
from userlayer.sdk.exceptions import DecryptError
from userlayer.sdk.schemas import Action, Context, Daypart, Event, Mode, Season, Service, Weather

__all__ = ["ForgetReport", "ProfileStore"]

logger = logging.getLogger(__name__)

FORMAT = b"userlayer.profile/2"
_LEGACY = (b"userlayer.profile/1",)
_AAD_PREFIX = b"userlayer.profile/1"  # inside every AAD; unchanged by format 2
SCHEMA_VERSION = b"1"
_BLOB_VERSION = 1
_META_KEYS = {"index_key": b"userlayer.index/1", "ledger_key": b"userlayer.ledger-key/1"}
_USER_TABLES = ("events", "settings", "signing_keys")  # rows keyed by user_ref besides deks


@contextmanager
def _decrypting() -> Iterator[None]:
    """Key-provider and AEAD failures of stored data become ``ProfileDecryptError``."""
    try:
        yield
    except ProfileDecryptError:
        raise
    except DecryptError as e:
        raise ProfileDecryptError(str(e)) from e


@dataclass(frozen=True)
class ForgetReport:
    """What ``forget`` did."""

    events_deleted: int
    kek_rotated: bool


def _payload(e: Event) -> bytes:
    c = e.context
    ts = int(e.timestamp.timestamp() * 1000)
    row = [
        e.item_id,
        e.action.value,
        ts,
        e.quantity,
        e.price,
        c.mode.value,
        c.daypart.value,
        c.weekday,
        c.season.value,
        c.weather.value,
        c.geo_cell,
    ]
    return json.dumps(row, separators=(",", ":")).encode()


def _event(user_id: str, service: str, raw: bytes) -> Event:
    # authenticated by AES-GCM, so built without re-validating every field
    item, action, ts, qty, price, mode, dp, wd, season, weather, geo = json.loads(raw)
    ctx = Context.model_construct(
        mode=Mode(mode),
        daypart=Daypart(dp),
        weekday=wd,
        season=Season(season),
        weather=Weather(weather),
        geo_cell=geo,
    )
    return Event.model_construct(
        user_id=user_id,
        service=Service(service),
        item_id=item,
        action=Action(action),
        timestamp=datetime.fromtimestamp(ts / 1000, UTC),
        quantity=qty,
        price=price,
        context=ctx,
    )


class ProfileStore:
    """Encrypted per-user event store on SQLite or PostgreSQL (see the module docstring).

    Args:
        where: a SQLite file (created if missing), or a ``postgresql://`` URL
            of a database the store keeps its tables in (schema ``schema``).
        keys: the KEK provider; default (SQLite only) a :class:`LocalKeyFile`
            beside the database (``<path>.keks``, 0600). A PostgreSQL store
            needs one given: its KEKs must not sit beside a database that
            many hosts reach.
        synchronous: SQLite ``synchronous`` for WAL (``NORMAL`` survives a
            killed process; ``FULL`` also a power cut).
        schema: PostgreSQL schema of the store's tables.
    """

    def __init__(
        self,
        where: str | Path,
        keys: KeyProvider | None = None,
        synchronous: str = "NORMAL",
        schema: str = "userlayer_profile",
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise StoreError(f"`synchronous` should be NORMAL or FULL, got {synchronous!r}")
        pg = is_postgres_url(where)
        if pg and keys is None:
            raise StoreError(
                "a PostgreSQL profile store needs `keys` (a KeyProvider, e.g. a KMS or a "
                "LocalKeyFile kept apart from the database)"
            )
        self.path = None if pg else Path(where)
        existed = self.path is not None and self.path.exists()
        self._lock = threading.RLock()
        self._db: StoreDb = open_db(where, synchronous, schema)
        self.where = self._db.where
        try:
            with self._tx("keys"):
                tables = self._db.tables()
                if tables and "meta" not in tables:
                    raise StoreError(
                        f"{self.where}: not a profile store (tables {sorted(tables)[:5]} "
                        "but no `meta`)"
                    )
                if not tables:  # a new store (alone here: a `keys` transaction)
                    self._db.create_schema()
                    self._db.executemany(
                        "INSERT INTO meta VALUES (?, ?)", [("format", FORMAT), ("generation", b"0")]
                    )
                    tables = set(TABLES)
                fmt = self._db.execute("SELECT value FROM meta WHERE key='format'").fetchone()
                if fmt is not None and bytes(fmt[0]) in _LEGACY:  # upgrade: add what is new
                    self._db.execute("UPDATE meta SET value=? WHERE key='format'", (FORMAT,))
                    fmt = (FORMAT,)
                if fmt is not None and bytes(fmt[0]) == FORMAT and not tables >= TABLES:
                    self._db.create_schema()  # format 1's missing tables
                    self._db.execute(
                        "INSERT INTO meta VALUES ('generation', ?) ON CONFLICT (key) DO NOTHING",
                        (b"0",),
                    )
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise StoreError(f"{self.where}: not a profile store ({e})") from e
        except BaseException:
            self._db.close()
            raise
        if fmt is None or bytes(fmt[0]) != FORMAT:
            self._db.close()
            raise StoreError(f"{self.where}: format {fmt and bytes(fmt[0])!r}, expected {FORMAT!r}")
        try:
            if keys is None:
                # an existing store without its key file must not silently get a new key
                assert self.path is not None
                kek_file = self.path.with_name(self.path.name + ".keks")
                keys = LocalKeyFile(kek_file, create=not existed)
            self.keys: KeyProvider = keys
            self._deks: dict[bytes, bytes] = {}
            self._gen = -1
            self._index_key = b""
            self._sync()
        except BaseException:
            self._db.close()
            raise
        self._finish_rotation()

    def _finish_rotation(self) -> None:
        """Rotate the KEK if a forget committed without its rotation (crash, provider error)."""
        with self._tx("read"):
            pending = self._db.execute("SELECT 1 FROM meta WHERE key='rotation_pending'").fetchone()
        if pending is None:
            return
        try:
            self.rotate_kek(destroy_old=True)
            logger.info("%s: finished the KEK rotation of an earlier forget", self.where)
        except KeyProviderError as e:
            logger.warning(
                "%s: a forget's KEK rotation is still pending (%s); copies of the store made "
                "before it stay decryptable with the current KEK",
                self.where,
                e,
            )

    @contextmanager
    def _ending(self) -> Iterator[None]:
        """Commit the open transaction, or roll it back on an exception."""
        try:
            yield
        except BaseException:
            self._rollback_quietly()
            raise
        self._db.commit()

    def _rollback_quietly(self) -> None:
        """Roll back after an error, keeping that error (a failed rollback is only logged)."""
        try:
            self._db.rollback()
        except Exception as e:  # the connection is gone: the server ends the transaction
            logger.warning("%s: rollback failed (%s)", self.where, e)

    @contextmanager
    def _tx(self, mode: TxMode = "keys") -> Iterator[None]:
        """A transaction, without regard to the generation (set-up and key management)."""
        with self._lock:
            self._db.begin(mode)
            with self._ending():
                yield

    def _generation(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        return int(row[0]) if row else 0

    def _sync(self) -> None:
        """Drop cached keys if another instance forgot a user or rotated keys (under the lock)."""
        gen = self._generation()
        if gen != self._gen:
            self._deks.clear()
            self._index_key = self._meta_key("index_key")
            self._gen = gen

    @contextmanager
    def _op(self, mode: TxMode) -> Iterator[None]:
        """A transaction on the current keys: retried if another instance changed them."""
        with self._lock:
            for _ in range(10):
                self._sync()
                self._db.begin(mode)
                try:
                    current = self._generation() == self._gen
                except BaseException:  # never leave the transaction (and its lock) open
                    self._rollback_quietly()
                    raise
                if current:
                    break
                self._db.rollback()
            else:  # pragma: no cover - ten forgets between two statements
                raise StoreError("the store's keys keep changing; try again")
            with self._ending():
                yield

    def _bump(self, keys_current: bool) -> None:
        """Advance the generation (inside a write transaction).

        ``keys_current``: this instance's keys are the store's now (the caller
        began on the current generation); otherwise they are re-read before
        the next operation.
        """
        nxt = str(self._generation() + 1).encode()  # a `keys` transaction: nobody else writes
        self._db.execute("UPDATE meta SET value=? WHERE key='generation'", (nxt,))
        self._gen = self._generation() if keys_current else -1

    def close(self) -> None:
        """Close the database connection and drop cached data keys."""
        with self._lock:
            self._deks.clear()
            self._index_key = b""
            self._db.close()

    def __enter__(self) -> ProfileStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # keys ------------------------------------------------------------------

    def _meta_key(self, name: str) -> bytes:
        """A 32-byte store key kept in ``meta`` wrapped by the KEK (made on first use)."""
        aad = _META_KEYS[name]
        # unwrapped inside the transaction: a rotation cannot destroy its KEK in between
        with self._tx("read"):
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (name,)).fetchone()
            if row is not None:
                return self._unwrap_meta(row[0], aad)
        with self._tx("keys"):
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (name,)).fetchone()
            if row is None:
                kek_id, wrapped = self.keys.wrap(secrets.token_bytes(32), aad)
                value = kek_id.encode() + b"\n" + wrapped
                self._db.execute("INSERT INTO meta VALUES (?, ?)", (name, value))
                row = (value,)
            return self._unwrap_meta(row[0], aad)

    def _unwrap_meta(self, value: bytes, aad: bytes) -> bytes:
        kek_id_b, _, wrapped = bytes(value).partition(b"\n")
        with _decrypting():
            return self.keys.unwrap(kek_id_b.decode(), wrapped, aad)

    def ledger_key(self) -> bytes:
        """The key of the privacy ledger's user pseudonyms (kept across KEK rotations)."""
        return self._meta_key("ledger_key")

    def replace_ledger_key(self) -> bytes:
        """A new ledger key (after a forget: the ledger is then re-keyed with it)."""
        new = secrets.token_bytes(32)
        kid, wrapped = self.keys.wrap(new, _META_KEYS["ledger_key"])
        with self._tx("keys"):
            self._db.execute(
                "INSERT INTO meta VALUES ('ledger_key', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (kid.encode() + b"\n" + wrapped,),
            )
        return new

    @staticmethod
    def _ref_of(index_key: bytes, user_id: str) -> bytes:
        return hmac.new(index_key, user_id.encode(), hashlib.sha256).digest()[:16]

    def _ref(self, user_id: str) -> bytes:
        return self._ref_of(self._index_key, user_id)

    def _dek(self, user_id: str, create: bool) -> bytes | None:
        """The user's DEK (inside an ``_op`` transaction; a write one when ``create``)."""
        ref = self._ref(user_id)
        dek = self._deks.get(ref)
        if dek is not None:
            return dek
        aad = b"userlayer.dek/1|" + ref
        row = self._db.execute(
            "SELECT kek_id, wrapped FROM deks WHERE user_ref=?", (ref,)
        ).fetchone()
        if row is None:
            if not create:
                return None
            kek_id, wrapped = self.keys.wrap(secrets.token_bytes(32), aad)
            uid = aead_encrypt(self._index_key, user_id.encode(), b"userlayer.uid/1|" + ref)
            # a concurrent writer (PostgreSQL) may make this user's key first: keep theirs
            self._db.execute(
                "INSERT INTO deks VALUES (?, ?, ?, ?) ON CONFLICT (user_ref) DO NOTHING",
                (ref, kek_id, wrapped, uid),
            )
            row = self._db.execute(
                "SELECT kek_id, wrapped FROM deks WHERE user_ref=?", (ref,)
            ).fetchone()
        with _decrypting():
            dek = self.keys.unwrap(row[0], bytes(row[1]), aad)
        self._deks[ref] = dek
        return dek

    # events ----------------------------------------------------------------

    def append(self, events: Iterable[Event]) -> int:
        """Encrypt and store events in one transaction; returns how many.

        Raises:
            StoreError: if an item is not an :class:`Event` (nothing is written).
        """
        batch = list(events)
        for i, e in enumerate(batch):
            if not isinstance(e, Event):
                raise StoreError(f"events[{i}] is a {type(e).__name__}, not an Event")
        with self._op("write"):
            rows = []
            per_user: dict[str, tuple[bytes, AESGCM]] = {}
            # keys made in one order, so two concurrent appends cannot deadlock (PostgreSQL)
            for user in sorted({e.user_id for e in batch}):
                dek = self._dek(user, create=True)
                assert dek is not None
                per_user[user] = (self._ref(user), AESGCM(dek))
            for e in batch:
                ref, aes = per_user[e.user_id]
                rid = secrets.token_bytes(16)
                aad = self._aad(e.service.value, e.user_id, rid)
                blob = bytes([_BLOB_VERSION]) + aead_encrypt(aes, _payload(e), aad)
                rows.append((rid, ref, e.service.value, blob))
            self._db.executemany(
                "INSERT INTO events(rid, user_ref, service, blob) VALUES (?, ?, ?, ?)", rows
            )
        return len(rows)

    @staticmethod
    def _aad(service: str, user_id: str, rid: bytes) -> bytes:
        return b"|".join((_AAD_PREFIX, service.encode(), user_id.encode(), rid, SCHEMA_VERSION))

    def events(
        self,
        user_id: str,
        since: datetime | None = None,
        until: datetime | None = None,
        services: Sequence[Service | str] | None = None,
    ) -> list[Event]:
        """The user's events in time order (ties in insertion order), decrypted in memory.

        Raises:
            ProfileDecryptError: if any stored row fails authentication.
        """
        with self._op("read"):
            dek = self._dek(user_id, create=False)
            if dek is None:
                return []
            rows = self._db.execute(
                "SELECT seq, rid, service, blob FROM events WHERE user_ref=? ORDER BY seq",
                (self._ref(user_id),),
            ).fetchall()
        want = None if services is None else {Service(s).value for s in services}
        out = []
        aes = AESGCM(dek)
        for seq, rid, service, blob in rows:
            if want is not None and service not in want:
                continue
            blob = bytes(blob)
            what = f"event row {seq} of user {user_id!r}"
            if not blob or blob[0] != _BLOB_VERSION:
                raise ProfileDecryptError(f"{what}: unknown blob version")
            with _decrypting():
                raw = aead_decrypt(aes, blob[1:], self._aad(service, user_id, bytes(rid)), what)
            try:
                e = _event(user_id, service, raw)
            except (ValueError, TypeError) as err:  # authenticated but unreadable: a bug
                raise ProfileDecryptError(f"{what}: payload does not parse ({err})") from err
            if (since is None or e.timestamp >= since) and (until is None or e.timestamp < until):
                out.append(e)
        out.sort(key=lambda e: e.timestamp)  # stable: ties keep insertion order
        return out

    # settings and the signing key --------------------------------------------

    def set_setting(self, user_id: str, name: str, value: dict[str, object]) -> None:
        """Store one of the user's settings (JSON), encrypted under their data key.

        Raises:
            StoreError: if ``value`` is not JSON-serialisable.
        """
        try:
            raw = json.dumps(value, sort_keys=True).encode()
        except (TypeError, ValueError) as e:
            raise StoreError(f"setting {name!r} is not JSON: {e}") from e
        with self._op("write"):
            dek = self._dek(user_id, create=True)
            assert dek is not None
            blob = aead_encrypt(dek, raw, self._setting_aad(user_id, name))
            self._db.execute(
                "INSERT INTO settings VALUES (?, ?, ?)"
                " ON CONFLICT (user_ref, name) DO UPDATE SET blob = excluded.blob",
                (self._ref(user_id), name, blob),
            )

    def setting(self, user_id: str, name: str) -> dict[str, object] | None:
        """One of the user's settings, or None if it was never set.

        Raises:
            ProfileDecryptError: if the stored setting fails authentication.
        """
        with self._op("read"):
            dek = self._dek(user_id, create=False)
            if dek is None:
                return None
            row = self._db.execute(
                "SELECT blob FROM settings WHERE user_ref=? AND name=?", (self._ref(user_id), name)
            ).fetchone()
        if row is None:
            return None
        what = f"setting {name!r} of user {user_id!r}"
        with _decrypting():
            raw = aead_decrypt(dek, bytes(row[0]), self._setting_aad(user_id, name), what)
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise ProfileDecryptError(f"{what}: not a JSON object")
        return value

    @staticmethod
    def _setting_aad(user_id: str, name: str) -> bytes:
        return b"|".join((_AAD_PREFIX, b"setting", user_id.encode(), name.encode(), SCHEMA_VERSION))

    def signing_key(self, user_id: str, create: bool = True) -> Ed25519PrivateKey | None:
        """The user's Ed25519 signing key, kept encrypted under their data key.

        Made on first use when ``create`` (two writers racing keep one key).
        Forgetting the user deletes it with their data.

        Raises:
            ProfileDecryptError: if the stored key fails authentication.
        """
        aad = b"|".join((_AAD_PREFIX, b"signing-key", user_id.encode(), SCHEMA_VERSION))
        with self._op("write" if create else "read"):
            dek = self._dek(user_id, create=create)
            if dek is None:
                return None
            ref = self._ref(user_id)
            row = self._db.execute(
                "SELECT blob FROM signing_keys WHERE user_ref=?", (ref,)
            ).fetchone()
            if row is None:
                if not create:
                    return None
                raw = Ed25519PrivateKey.generate().private_bytes(
                    serialization.Encoding.Raw,
                    serialization.PrivateFormat.Raw,
                    serialization.NoEncryption(),
                )
                # a concurrent writer (PostgreSQL) may store one first: both then keep theirs
                self._db.execute(
                    "INSERT INTO signing_keys VALUES (?, ?) ON CONFLICT (user_ref) DO NOTHING",
                    (ref, aead_encrypt(dek, raw, aad)),
                )
                row = self._db.execute(
                    "SELECT blob FROM signing_keys WHERE user_ref=?", (ref,)
                ).fetchone()
        with _decrypting():
            raw = aead_decrypt(dek, bytes(row[0]), aad, f"signing key of user {user_id!r}")
        return Ed25519PrivateKey.from_private_bytes(raw)

    # listing -------------------------------------------------------------------

    def count(self, user_id: str | None = None) -> int:
        """Number of stored events, of one user or of everyone."""
        with self._op("read"):
            if user_id is None:
                return int(self._db.execute("SELECT count(*) FROM events").fetchone()[0])
            return int(
                self._db.execute(
                    "SELECT count(*) FROM events WHERE user_ref=?", (self._ref(user_id),)
                ).fetchone()[0]
            )

    def users(self) -> list[str]:
        """Ids of the users with a data key here, sorted."""
        with self._op("read"):
            rows = self._db.execute("SELECT user_ref, uid FROM deks").fetchall()
            index = self._index_key
        with _decrypting():
            return sorted(
                aead_decrypt(
                    index, bytes(uid), b"userlayer.uid/1|" + bytes(ref), "user id"
                ).decode()
                for ref, uid in rows
            )

    def export(self, user_id: str) -> list[dict[str, object]]:
        """The user's own data, JSON-ready (data portability)."""
        return [e.model_dump(mode="json") for e in self.events(user_id)]

    # deletion and rotation ---------------------------------------------------

    def forget(self, user_id: str, rotate: bool = True) -> ForgetReport:
        """Crypto-shred a user: delete their rows and keys, replace the index key, rotate the KEK.

        With a provider that cannot rotate (``EnvKeyProvider``) the rows and the
        wrapped key are still deleted and the index key replaced, and
        ``kek_rotated`` is False: an old copy of the file then stays
        decryptable with that KEK. The deletion commits with a "rotation
        pending" mark; a rotation that did not happen (a crash, a provider
        error) is done by the next instance that opens the store.
        """
        with self._op("keys"):
            ref = self._ref(user_id)
            n = self._db.execute("DELETE FROM events WHERE user_ref=?", (ref,)).rowcount
            for table in ("settings", "signing_keys", "deks"):
                self._db.execute(f"DELETE FROM {table} WHERE user_ref=?", (ref,))  # noqa: S608
            self._replace_index_key()
            self._bump(keys_current=True)
            if rotate:  # committed with the deletion: an interrupted rotation is finished later
                self._db.execute(
                    "INSERT INTO meta VALUES ('rotation_pending', ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (b"1",),
                )
        with self._lock:
            self._db.after_delete()
        rotated = False
        if rotate:
            try:
                self.rotate_kek(destroy_old=True)
                rotated = True
            except KeyProviderError as e:
                logger.warning("forget: KEK not rotated (%s)", e)
        return ForgetReport(int(n), rotated)

    def _replace_index_key(self) -> None:
        """A new random index key: every user's reference and encrypted id redone (in a tx)."""
        new = secrets.token_bytes(32)
        for ref, kek_id, wrapped, uid in self._db.execute(
            "SELECT user_ref, kek_id, wrapped, uid FROM deks"
        ).fetchall():
            ref = bytes(ref)
            with _decrypting():
                user = aead_decrypt(self._index_key, bytes(uid), b"userlayer.uid/1|" + ref, "uid")
                dek = self.keys.unwrap(kek_id, bytes(wrapped), b"userlayer.dek/1|" + ref)
            new_ref = self._ref_of(new, user.decode())
            kid, w = self.keys.wrap(dek, b"userlayer.dek/1|" + new_ref)
            new_uid = aead_encrypt(new, user, b"userlayer.uid/1|" + new_ref)
            self._db.execute(
                "UPDATE deks SET user_ref=?, kek_id=?, wrapped=?, uid=? WHERE user_ref=?",
                (new_ref, kid, w, new_uid, ref),
            )
            for table in _USER_TABLES:
                self._db.execute(
                    f"UPDATE {table} SET user_ref=? WHERE user_ref=?",  # noqa: S608
                    (new_ref, ref),
                )
        kid, w = self.keys.wrap(new, _META_KEYS["index_key"])
        self._db.execute(
            "UPDATE meta SET value=? WHERE key='index_key'", (kid.encode() + b"\n" + w,)
        )
        self._index_key = new
        self._deks.clear()

    def rotate_kek(self, destroy_old: bool = False) -> str:
        """Re-wrap every data key (and the store's own keys) under a new KEK; returns its id.

        Events are not touched. With ``destroy_old`` every other KEK the
        provider holds is destroyed once nothing is wrapped under it any more;
        that check runs inside a write transaction, so another instance cannot
        wrap a key under a KEK in the middle of its destruction.
        """
        with self._lock:
            with self._tx("read"):
                before = self._referenced()
            new = self.keys.rotate()
            with self._tx("keys"):
                self._rewrap(new)
                self._bump(keys_current=False)  # another instance may have forgotten meanwhile
            self._db.after_delete()
            if destroy_old:
                with self._tx("keys"):
                    self._rewrap(self.keys.current_id)  # a key wrapped by a late writer
                    old = before | set(getattr(self.keys, "key_ids", ()))
                    for kid in old - self._referenced() - {self.keys.current_id}:
                        self.keys.destroy(kid)
                    self._db.execute("DELETE FROM meta WHERE key='rotation_pending'")
        return new

    def _referenced(self) -> set[str]:
        ids = {r[0] for r in self._db.execute("SELECT DISTINCT kek_id FROM deks")}
        for name in _META_KEYS:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (name,)).fetchone()
            if row is not None:
                ids.add(bytes(row[0]).partition(b"\n")[0].decode())
        return ids

    def _rewrap(self, current: str) -> None:
        """Re-wrap every DEK and store key not under ``current`` (inside a write tx)."""
        for ref, kek_id, wrapped in self._db.execute(
            "SELECT user_ref, kek_id, wrapped FROM deks WHERE kek_id != ?", (current,)
        ).fetchall():
            aad = b"userlayer.dek/1|" + bytes(ref)
            with _decrypting():
                dek = self.keys.unwrap(kek_id, bytes(wrapped), aad)
            kid, w = self.keys.wrap(dek, aad)
            self._db.execute("UPDATE deks SET kek_id=?, wrapped=? WHERE user_ref=?", (kid, w, ref))
        for name, aad in _META_KEYS.items():
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (name,)).fetchone()
            if row is None:
                continue
            old_kid, _, old_wrapped = bytes(row[0]).partition(b"\n")
            if old_kid.decode() == current:
                continue
            with _decrypting():
                key = self.keys.unwrap(old_kid.decode(), old_wrapped, aad)
            kid, w = self.keys.wrap(key, aad)
            self._db.execute(
                "UPDATE meta SET value=? WHERE key=?", (kid.encode() + b"\n" + w, name)
            )
