"""The encrypted profile store: a user's events, readable only with their data key.

Embedded default: one SQLite file in WAL mode. Concurrent writers (threads
or processes) each open their own :class:`ProfileStore`; SQLite serialises
the write transactions and an append is acknowledged only after its commit.

Layout and wire format (schema ``userlayer.profile/1``)::

    meta(key TEXT PRIMARY KEY, value BLOB)
        "format"      -> b"userlayer.profile/1"
        "index_key"   -> kek_id, newline, wrapped 32-byte HMAC key (AAD b"userlayer.index/1")
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

So a ciphertext copied to another user, record or service fails to decrypt.
Only the service name, the pseudonymous user reference and the row order are
stored in clear; event times, items, prices and context are encrypted.

``forget(user)`` deletes the user's rows and wrapped DEK with SQLite's
``secure_delete`` on, checkpoints the WAL, and rotates the KEK, destroying
the old one: a copy of the file taken before still holds the old wrapped DEK,
but nothing can unwrap it any more (crypto-shredding). Rotation re-wraps the
other users' DEKs (one AES operation each), never re-encrypts events.
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

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from userlayer.edge.exceptions import KeyProviderError, ProfileDecryptError, StoreError
from userlayer.edge.keys import KeyProvider, LocalKeyFile, aead_decrypt, aead_encrypt
from userlayer.sdk.schemas import Action, Context, Daypart, Event, Mode, Season, Service, Weather

__all__ = ["ForgetReport", "ProfileStore"]

logger = logging.getLogger(__name__)

FORMAT = b"userlayer.profile/1"
SCHEMA_VERSION = b"1"
_BLOB_VERSION = 1
_META_KEYS = {"index_key": b"userlayer.index/1", "ledger_key": b"userlayer.ledger-key/1"}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS deks(
    user_ref BLOB PRIMARY KEY, kek_id TEXT NOT NULL, wrapped BLOB NOT NULL, uid BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS events(
    seq INTEGER PRIMARY KEY, rid BLOB NOT NULL UNIQUE, user_ref BLOB NOT NULL,
    service TEXT NOT NULL, blob BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_user ON events(user_ref, seq);
CREATE TABLE IF NOT EXISTS settings(
    user_ref BLOB NOT NULL, name TEXT NOT NULL, blob BLOB NOT NULL,
    PRIMARY KEY(user_ref, name));
"""


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
    """Encrypted per-user event store on SQLite (see the module docstring).

    Args:
        path: the database file (created if missing).
        keys: the KEK provider; default a :class:`LocalKeyFile` beside the
            database (``<path>.keks``, 0600).
        synchronous: SQLite ``synchronous`` for WAL (``NORMAL`` survives a
            killed process; ``FULL`` also a power cut).
    """

    def __init__(
        self,
        path: str | Path,
        keys: KeyProvider | None = None,
        synchronous: str = "NORMAL",
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise StoreError(f"`synchronous` should be NORMAL or FULL, got {synchronous!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists()
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.path, timeout=60.0, isolation_level=None, check_same_thread=False
        )
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.executescript(_SCHEMA)
            with self._tx():
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (FORMAT,))
            fmt = self._db.execute("SELECT value FROM meta WHERE key='format'").fetchone()
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise StoreError(f"{self.path}: not a profile store ({e})") from e
        if fmt is None or bytes(fmt[0]) != FORMAT:
            self._db.close()
            raise StoreError(f"{self.path}: format {fmt and bytes(fmt[0])!r}, expected {FORMAT!r}")
        # an existing store without its key file must not silently get a new key
        kek_file = self.path.with_name(self.path.name + ".keks")
        try:
            self.keys: KeyProvider = keys or LocalKeyFile(kek_file, create=not existed)
        except BaseException:
            self._db.close()
            raise
        self._index_key = self._meta_key("index_key")
        self._deks: dict[bytes, bytes] = {}

    @contextmanager
    def _tx(self) -> Iterator[None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the database connection and drop cached data keys."""
        with self._lock:
            self._deks.clear()
            self._db.close()

    def __enter__(self) -> ProfileStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # keys ------------------------------------------------------------------

    def _meta_key(self, name: str) -> bytes:
        """A 32-byte store key kept in ``meta`` wrapped by the KEK (made on first use)."""
        aad = _META_KEYS[name]
        with self._tx():
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (name,)).fetchone()
            if row is None:
                kek_id, wrapped = self.keys.wrap(secrets.token_bytes(32), aad)
                value = kek_id.encode() + b"\n" + wrapped
                self._db.execute("INSERT INTO meta VALUES (?, ?)", (name, value))
                row = (value,)
        kek_id_b, _, wrapped = bytes(row[0]).partition(b"\n")
        return self.keys.unwrap(kek_id_b.decode(), wrapped, aad)

    def ledger_key(self) -> bytes:
        """The key of the privacy ledger's user pseudonyms (kept across KEK rotations)."""
        return self._meta_key("ledger_key")

    def _ref(self, user_id: str) -> bytes:
        return hmac.new(self._index_key, user_id.encode(), hashlib.sha256).digest()[:16]

    def _dek(self, user_id: str, create: bool) -> bytes | None:
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
            # another writer may have created it meanwhile: theirs wins
            self._db.execute(
                "INSERT OR IGNORE INTO deks VALUES (?, ?, ?, ?)", (ref, kek_id, wrapped, uid)
            )
            row = self._db.execute(
                "SELECT kek_id, wrapped FROM deks WHERE user_ref=?", (ref,)
            ).fetchone()
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
        with self._tx():
            rows = []
            per_user: dict[str, tuple[bytes, AESGCM]] = {}
            for e in batch:
                if e.user_id not in per_user:
                    dek = self._dek(e.user_id, create=True)
                    assert dek is not None
                    per_user[e.user_id] = (self._ref(e.user_id), AESGCM(dek))
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
        return b"|".join((FORMAT, service.encode(), user_id.encode(), rid, SCHEMA_VERSION))

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
        with self._lock:
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
            raw = aead_decrypt(aes, blob[1:], self._aad(service, user_id, bytes(rid)), what)
            try:
                e = _event(user_id, service, raw)
            except (ValueError, TypeError) as err:  # authenticated but unreadable: a bug
                raise ProfileDecryptError(f"{what}: payload does not parse ({err})") from err
            if (since is None or e.timestamp >= since) and (until is None or e.timestamp < until):
                out.append(e)
        out.sort(key=lambda e: e.timestamp)  # stable: ties keep insertion order
        return out

    def set_setting(self, user_id: str, name: str, value: dict[str, object]) -> None:
        """Store one of the user's settings (JSON), encrypted under their data key.

        Raises:
            StoreError: if ``value`` is not JSON-serialisable.
        """
        try:
            raw = json.dumps(value, sort_keys=True).encode()
        except (TypeError, ValueError) as e:
            raise StoreError(f"setting {name!r} is not JSON: {e}") from e
        with self._tx():
            dek = self._dek(user_id, create=True)
            assert dek is not None
            ref = self._ref(user_id)
            blob = aead_encrypt(dek, raw, self._setting_aad(user_id, name))
            self._db.execute("INSERT OR REPLACE INTO settings VALUES (?, ?, ?)", (ref, name, blob))

    def setting(self, user_id: str, name: str) -> dict[str, object] | None:
        """One of the user's settings, or None if it was never set.

        Raises:
            ProfileDecryptError: if the stored setting fails authentication.
        """
        with self._lock:
            dek = self._dek(user_id, create=False)
            if dek is None:
                return None
            row = self._db.execute(
                "SELECT blob FROM settings WHERE user_ref=? AND name=?", (self._ref(user_id), name)
            ).fetchone()
        if row is None:
            return None
        what = f"setting {name!r} of user {user_id!r}"
        raw = aead_decrypt(dek, bytes(row[0]), self._setting_aad(user_id, name), what)
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise ProfileDecryptError(f"{what}: not a JSON object")
        return value

    @staticmethod
    def _setting_aad(user_id: str, name: str) -> bytes:
        return b"|".join((FORMAT, b"setting", user_id.encode(), name.encode(), SCHEMA_VERSION))

    def count(self, user_id: str | None = None) -> int:
        """Number of stored events, of one user or of everyone."""
        with self._lock:
            if user_id is None:
                return int(self._db.execute("SELECT count(*) FROM events").fetchone()[0])
            return int(
                self._db.execute(
                    "SELECT count(*) FROM events WHERE user_ref=?", (self._ref(user_id),)
                ).fetchone()[0]
            )

    def users(self) -> list[str]:
        """Ids of the users with a data key here, sorted."""
        with self._lock:
            rows = self._db.execute("SELECT user_ref, uid FROM deks").fetchall()
        return sorted(
            aead_decrypt(
                self._index_key, bytes(uid), b"userlayer.uid/1|" + bytes(ref), "user id"
            ).decode()
            for ref, uid in rows
        )

    def export(self, user_id: str) -> list[dict[str, object]]:
        """The user's own data, JSON-ready (data portability)."""
        return [e.model_dump(mode="json") for e in self.events(user_id)]

    # deletion and rotation ---------------------------------------------------

    def forget(self, user_id: str, rotate: bool = True) -> ForgetReport:
        """Crypto-shred a user: delete their rows and data key, then rotate the KEK.

        With a provider that cannot rotate (``EnvKeyProvider``) the rows and the
        wrapped key are still deleted and ``kek_rotated`` is False: an old copy
        of the file then stays decryptable with that KEK.
        """
        ref = self._ref(user_id)
        with self._tx():
            n = self._db.execute("DELETE FROM events WHERE user_ref=?", (ref,)).rowcount
            self._db.execute("DELETE FROM settings WHERE user_ref=?", (ref,))
            self._db.execute("DELETE FROM deks WHERE user_ref=?", (ref,))
        self._deks.pop(ref, None)
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rotated = False
        if rotate:
            try:
                self.rotate_kek(destroy_old=True)
                rotated = True
            except KeyProviderError as e:
                logger.warning("forget: KEK not rotated (%s)", e)
        return ForgetReport(int(n), rotated)

    def rotate_kek(self, destroy_old: bool = False) -> str:
        """Re-wrap every data key (and the index key) under a new KEK; returns its id.

        Events are not touched. With ``destroy_old`` the KEKs no longer used
        are destroyed once the re-wrapped keys are committed.
        """
        with self._lock:
            old_ids = {r[0] for r in self._db.execute("SELECT DISTINCT kek_id FROM deks")}
            new = self.keys.rotate()
            with self._tx():
                for ref, kek_id, wrapped in self._db.execute(
                    "SELECT user_ref, kek_id, wrapped FROM deks"
                ).fetchall():
                    aad = b"userlayer.dek/1|" + bytes(ref)
                    dek = self.keys.unwrap(kek_id, bytes(wrapped), aad)
                    kid, w = self.keys.wrap(dek, aad)
                    self._db.execute(
                        "UPDATE deks SET kek_id=?, wrapped=? WHERE user_ref=?", (kid, w, ref)
                    )
                for name, aad in _META_KEYS.items():
                    row = self._db.execute("SELECT value FROM meta WHERE key=?", (name,)).fetchone()
                    if row is None:
                        continue
                    old_kid, _, old_wrapped = bytes(row[0]).partition(b"\n")
                    old_ids.add(old_kid.decode())
                    key = self.keys.unwrap(old_kid.decode(), old_wrapped, aad)
                    kid, w = self.keys.wrap(key, aad)
                    self._db.execute(
                        "UPDATE meta SET value=? WHERE key=?", (kid.encode() + b"\n" + w, name)
                    )
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if destroy_old:
            for kid in old_ids - {new}:
                self.keys.destroy(kid)
        return new
