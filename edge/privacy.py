"""Each user's privacy ledger: every release of their data, and a budget that cannot be overspent.

Unit. The ledger's epsilon is per *event* of the user (one purchase, view or
cart addition): each release is charged for the number of examples one event
can change (``group``), see :mod:`userlayer.sdk.privacy.accounting`.

Entries. One row per release (a DP-SGD training of the user's adapter): the
raw mechanism (noise multiplier, sample rate, steps), the group size, where
its randomness came from, its status (``reserved`` or ``spent``), its time,
and the user's epsilon after it under the ledger's accountant. The raw
columns let either accountant (``prv``, ``rdp``) recompute every epsilon
(:meth:`PrivacyLedger.spent` with ``accountant=``). The user's epsilon is
the composition of every reserved or spent entry of the last ``period_days``;
training only uses events of the same period (the data horizon), so every
release that saw a given event is inside one such period.

Reservation. :meth:`PrivacyLedger.reserve` checks and reserves in one SQLite
write transaction (``BEGIN IMMEDIATE``: one writer at a time across threads
and processes): it composes the user's window with the planned mechanism,
refuses with ``BudgetExceededError`` if that exceeds the budget, else inserts
a ``reserved`` row, then commits. The caller trains and commits the
reservation (``spent``) or releases it (deleted) when nothing was released.
A process that dies in between leaves the reservation counted: the budget is
never overspent, at worst a little is lost.

Pseudonyms. Users appear as HMAC-SHA256(key, user id) (32 hex chars); the
key comes from the profile store (wrapped by its KEK; a dictionary of user
ids does not reverse it). When a user is forgotten the key is replaced and
every other user's rows re-keyed (:meth:`PrivacyLedger.rekey`), so an old
copy of the ledger cannot be searched for the forgotten user with today's
key. The ledger records its key's id (``meta.key_id``): an instance whose key
is stale re-reads it from its source before every transaction. Ledgers of
format 1 used an unkeyed SHA-256: their rows are moved to the keyed
pseudonym the first time the user is looked up.

Schema (format ``userlayer.ledger/2``)::

    meta(key TEXT PRIMARY KEY, value TEXT)   "format" -> "userlayer.ledger/2"
    entries(id INTEGER PRIMARY KEY, user TEXT, time TEXT, noise REAL, rate REAL,
            steps INTEGER, grp INTEGER, status TEXT, eps REAL, delta REAL,
            accountant TEXT, lib TEXT, rng TEXT)
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType

from userlayer.edge.exceptions import BudgetExceededError, StoreError, TrainingError
from userlayer.sdk.privacy import DEFAULT_ACCOUNTANT, OS_SOURCE, Mechanism, epsilon, library

__all__ = ["LEGACY_GROUP", "LedgerEntry", "PrivacyLedger", "Reservation"]

FORMAT = "userlayer.ledger/2"
# the examples one event could change under the format-1 training view (its own example,
# and up to five later prompts and mode windows, each changed: 1 + 2 * 5)
LEGACY_GROUP = 11
_INSERT = (
    "INSERT INTO entries(user, time, noise, rate, steps, grp, status, eps, delta, accountant, "
    "lib, rng) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT = (
    "SELECT time, noise, rate, steps, grp, status, eps, delta, accountant, lib, rng "
    "FROM entries WHERE user=? ORDER BY time, id"
)


@dataclass(frozen=True)
class LedgerEntry:
    """One release of a user's data and the user's epsilon after it."""

    time: datetime
    noise_multiplier: float
    sample_rate: float
    steps: int
    group: int  # examples one event can change in this release
    status: str  # reserved | spent
    epsilon_after: float
    delta: float
    accountant: str
    library: str
    rng: str  # where the mechanism's randomness came from

    @property
    def mechanism(self) -> Mechanism:
        """The raw mechanism of this entry."""
        return Mechanism(self.noise_multiplier, self.sample_rate, self.steps)


class Reservation:
    """A reserved release: commit it when the release happened, release it when not.

    As a context manager it commits on a normal exit and releases on an exception.
    """

    def __init__(self, ledger: PrivacyLedger, row_id: int, entry: LedgerEntry) -> None:
        self._ledger, self._id, self.entry = ledger, row_id, entry
        self._done = False

    def commit(self) -> LedgerEntry:
        """Mark the release as spent; returns its entry."""
        if not self._done:
            self._ledger._set_status(self._id, "spent")
            self._done = True
            self.entry = LedgerEntry(**{**self.entry.__dict__, "status": "spent"})
        return self.entry

    def release(self) -> None:
        """Drop the reservation (nothing of the user's data was released)."""
        if not self._done:
            self._ledger._delete(self._id)
            self._done = True

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.release()


class PrivacyLedger:
    """Per-user epsilon ledger with a budget over a rolling period (see the module docstring).

    Args:
        path: SQLite file (created if missing).
        key: the 32-byte pseudonym key, or where to read the current one
            (``ProfileStore.ledger_key``, re-read when another instance re-keyed).
        budget: epsilon allowed per ``period_days``, per event.
        delta: the delta every epsilon is stated at.
        period_days: the rolling period (and the data horizon of training).
        accountant: ``prv`` (default) or ``rdp``.

    Raises:
        TrainingError: on a bad setting; StoreError: if the file is not a ledger.
    """

    def __init__(
        self,
        path: str | Path,
        key: bytes | Callable[[], bytes],
        budget: float = 8.0,
        delta: float = 1e-5,
        period_days: float = 365.0,
        accountant: str = DEFAULT_ACCOUNTANT,
    ) -> None:
        if budget <= 0 or not 0 < delta < 1 or period_days <= 0:
            raise TrainingError("`budget` and `period_days` should be > 0 and `delta` in (0, 1)")
        self._source = key if callable(key) else None
        self._key = self._check_key(key() if callable(key) else key)
        epsilon([], delta, accountant)  # validates the accountant's name
        self.budget, self.delta, self.period_days = budget, delta, period_days
        self.accountant = accountant
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            str(path), timeout=60.0, isolation_level=None, check_same_thread=False
        )
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA secure_delete=ON")  # migrated and forgotten rows
            self._setup()
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise StoreError(f"{path}: not a privacy ledger ({e})") from e

    def _setup(self) -> None:
        with self._tx(check_key=False):
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
            if "ledger" in tables and "meta" not in tables:  # format 1
                self._db.execute("ALTER TABLE ledger RENAME TO ledger_v1")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT)")
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (FORMAT,))
            fmt = self._db.execute("SELECT value FROM meta WHERE key='format'").fetchone()[0]
            if fmt != FORMAT:
                raise StoreError(f"ledger format {fmt!r}, expected {FORMAT!r}")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS entries(id INTEGER PRIMARY KEY, user TEXT NOT NULL, "
                "time TEXT NOT NULL, noise REAL NOT NULL, rate REAL NOT NULL, "
                "steps INTEGER NOT NULL, grp INTEGER NOT NULL, status TEXT NOT NULL, "
                "eps REAL NOT NULL, delta REAL NOT NULL, accountant TEXT NOT NULL, "
                "lib TEXT NOT NULL, rng TEXT NOT NULL)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS entries_user ON entries(user, time)")
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('key_id', ?)", (self._key_id(self._key),)
            )
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
        self._legacy = "ledger_v1" in tables

    @staticmethod
    def _check_key(key: object) -> bytes:
        if not isinstance(key, bytes) or len(key) != 32:
            raise TrainingError("`key` should be 32 bytes (ProfileStore.ledger_key())")
        return key

    @staticmethod
    def _key_id(key: bytes) -> str:
        return hmac.new(key, b"userlayer.ledger/key-id", "sha256").hexdigest()[:16]

    def _current_key(self) -> None:
        """Inside a transaction: make sure rows are named with the ledger's key of now."""
        want = self._db.execute("SELECT value FROM meta WHERE key='key_id'").fetchone()[0]
        if want == self._key_id(self._key):
            return
        if self._source is not None:
            self._key = self._check_key(self._source())
        if want != self._key_id(self._key):
            raise StoreError("the ledger was re-keyed with a key this instance cannot read")

    @contextmanager
    def _tx(self, check_key: bool = True) -> Iterator[None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if check_key:
                    self._current_key()
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @staticmethod
    def _pseudonym(key: bytes, user_id: str) -> str:
        return hmac.new(key, b"userlayer.ledger/2|" + user_id.encode(), "sha256").hexdigest()[:32]

    def _who(self, user_id: str) -> str:
        return self._pseudonym(self._key, user_id)

    def _migrate(self, user_id: str) -> None:
        """Move a format-1 user's rows (unkeyed pseudonym) to the keyed one; inside a write tx."""
        if not self._legacy:
            return
        old = hashlib.sha256(b"userlayer.ledger/1|" + user_id.encode()).hexdigest()[:32]
        rows = self._db.execute(
            "SELECT time, noise, rate, steps, eps, delta, accountant, lib FROM ledger_v1 "
            "WHERE user=?",
            (old,),
        ).fetchall()
        for t, noise, rate, steps, eps, delta, acc, lib in rows:
            legacy = (LEGACY_GROUP, "spent", eps, delta, acc, lib, "unrecorded (format 1)")
            self._db.execute(_INSERT, (self._who(user_id), t, noise, rate, steps, *legacy))
        if rows:
            self._db.execute("DELETE FROM ledger_v1 WHERE user=?", (old,))

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def _entries(self, user_id: str) -> list[LedgerEntry]:
        rows = self._db.execute(_SELECT, (self._who(user_id),)).fetchall()
        return [
            LedgerEntry(datetime.fromisoformat(r[0]), r[1], r[2], int(r[3]), int(r[4]), *r[5:])
            for r in rows
        ]

    def entries(self, user_id: str) -> list[LedgerEntry]:
        """Every entry of the user (reserved and spent), oldest first."""
        with self._tx():
            self._migrate(user_id)
            return self._entries(user_id)

    def _window(self, entries: list[LedgerEntry], now: datetime) -> list[LedgerEntry]:
        start = now - timedelta(days=self.period_days)
        return [e for e in entries if e.time > start]

    def _epsilon(self, entries: list[LedgerEntry], accountant: str | None = None) -> float:
        group = max((e.group for e in entries), default=1)
        mechs = [e.mechanism for e in entries]
        return epsilon(mechs, self.delta, accountant or self.accountant, group)

    def spent(
        self, user_id: str, now: datetime | None = None, accountant: str | None = None
    ) -> float:
        """Epsilon the user has spent (or reserved) in the current period.

        ``accountant`` recomputes it with another accountant than the ledger's.
        """
        window = self._window(self.entries(user_id), now or datetime.now(UTC))
        return self._epsilon(window, accountant)

    def check(
        self,
        user_id: str,
        planned: Sequence[tuple[Mechanism, int]],
        now: datetime | None = None,
    ) -> float:
        """The user's epsilon after the planned releases ``(mechanism, group)``, writing nothing.

        For a layer made of several releases (the profile, then DP-SGD): check
        them together before the first is reserved, so that a refusal of a
        later one does not spend the earlier one's budget for nothing. Each
        release is still reserved atomically on its own.

        Raises:
            BudgetExceededError: the planned releases together would pass the budget.
        """
        now = now or datetime.now(UTC)
        with self._tx():
            self._migrate(user_id)
            window = self._window(self._entries(user_id), now)
        plan = [
            LedgerEntry(now, *m.as_tuple(), g, "reserved", 0.0, self.delta, "", "", OS_SOURCE)
            for m, g in planned
        ]
        before, after = self._epsilon(window), self._epsilon([*window, *plan])
        if not after <= self.budget:
            raise BudgetExceededError(
                f"user {user_id!r}: the planned releases would bring epsilon from {before:.3f} "
                f"to {after:.3f}, over the budget {self.budget} (per event, delta {self.delta}, "
                f"{self.period_days:g} days, {self.accountant} accountant)"
            )
        return after

    def reserve(
        self,
        user_id: str,
        mechanism: Mechanism,
        group: int = 1,
        now: datetime | None = None,
        rng: str = OS_SOURCE,
    ) -> Reservation:
        """Check the budget and reserve a release in one transaction.

        Raises:
            BudgetExceededError: with the spent, planned and allowed epsilon
                (nothing is written then).
        """
        now = now or datetime.now(UTC)
        with self._tx():
            self._migrate(user_id)
            window = self._window(self._entries(user_id), now)
            before = self._epsilon(window)
            planned = LedgerEntry(
                now, *mechanism.as_tuple(), group, "reserved", 0.0, self.delta, "", "", rng
            )
            after = self._epsilon([*window, planned])
            if not after <= self.budget:  # NaN is never within the budget
                raise BudgetExceededError(
                    f"user {user_id!r}: training would bring epsilon from {before:.3f} to "
                    f"{after:.3f}, over the budget {self.budget} (per event, delta "
                    f"{self.delta}, {self.period_days:g} days, {self.accountant} accountant)"
                )
            entry = LedgerEntry(
                **{
                    **planned.__dict__,
                    "epsilon_after": after,
                    "accountant": self.accountant,
                    "library": library(),
                }
            )
            row = (self._who(user_id), now.isoformat(), *mechanism.as_tuple(), group)
            meta = ("reserved", after, self.delta, self.accountant, entry.library, rng)
            cur = self._db.execute(_INSERT, (*row, *meta))
            row_id = int(cur.lastrowid or 0)
        return Reservation(self, row_id, entry)

    def _set_status(self, row_id: int, status: str) -> None:
        with self._tx():
            self._db.execute("UPDATE entries SET status=? WHERE id=?", (status, row_id))

    def _delete(self, row_id: int) -> None:
        with self._tx():
            self._db.execute("DELETE FROM entries WHERE id=?", (row_id,))

    def forget(self, user_id: str) -> None:
        """Remove a user's entries (their data is being erased with them)."""
        with self._tx():
            self._migrate(user_id)
            self._db.execute("DELETE FROM entries WHERE user=?", (self._who(user_id),))
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def rekey(self, users: Iterable[str], new_key: bytes) -> int:
        """Name every user's rows with ``new_key``; rows of anyone else are deleted.

        ``users`` are the users the profile store still holds. Returns the rows kept.
        """
        new_key = self._check_key(new_key)
        kept: set[int] = set()
        with self._tx():
            for u in users:
                self._migrate(u)
                old, new = (
                    self._who(u),
                    hmac.new(new_key, b"userlayer.ledger/2|" + u.encode(), "sha256").hexdigest()[
                        :32
                    ],
                )
                ids = [
                    r[0] for r in self._db.execute("SELECT id FROM entries WHERE user=?", (old,))
                ]
                self._db.execute("UPDATE entries SET user=? WHERE user=?", (new, old))
                kept.update(ids)
            gone = [r[0] for r in self._db.execute("SELECT id FROM entries") if r[0] not in kept]
            self._db.executemany("DELETE FROM entries WHERE id=?", [(i,) for i in gone])
            self._db.execute("UPDATE meta SET value=? WHERE key='key_id'", (self._key_id(new_key),))
            self._key = new_key
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return len(kept)
