"""Privacy accounting: a pinned RDP accountant and each user's ledger of spent epsilon.

Every training of a user's adapter is one entry ``(noise_multiplier,
sample_rate, steps)`` in the user's ledger. The epsilon a user has spent is
the RDP composition (Opacus ``RDPAccountant``, the version pinned by the
``[edge]`` extra) of every entry of the last ``period_days``. Training only
uses events of the last ``period_days`` (the data horizon), so every
training that saw a given event falls inside one such period, and each event
is protected at the budget (default epsilon 8 at delta 1e-5 per year of
data). A training that would exceed the budget is refused before it starts.

The ledger is a small SQLite table beside the profile store. Users appear
under a SHA-256 pseudonym; entries hold only DP parameters and times.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path

from userlayer.edge.exceptions import BudgetExceededError, TrainingError

__all__ = ["ACCOUNTANT", "LedgerEntry", "PrivacyLedger", "epsilon_of", "noise_for"]

ACCOUNTANT = "rdp"


def _opacus() -> tuple[type, object]:
    root = logging.getLogger()
    handlers = list(root.handlers)
    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier

    root.handlers[:] = handlers
    return RDPAccountant, get_noise_multiplier


def library() -> str:
    """The accountant's library and version, as recorded with every epsilon."""
    return f"opacus {version('opacus')}"


def epsilon_of(history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon of composing ``(noise_multiplier, sample_rate, steps)`` entries at ``delta``."""
    if not history:
        return 0.0
    rdp_cls, _ = _opacus()
    acc = rdp_cls()
    acc.history = list(history)
    return float(acc.get_epsilon(delta))


def noise_for(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier that keeps one training at ``target_epsilon``."""
    if target_epsilon <= 0:
        raise TrainingError(f"`target_epsilon` should be positive, got {target_epsilon}")
    _, get_nm = _opacus()
    return float(
        get_nm(  # type: ignore[operator]
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=ACCOUNTANT,
        )
    )


@dataclass(frozen=True)
class LedgerEntry:
    """One training's DP parameters and the user's epsilon after it."""

    time: datetime
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon_after: float
    delta: float
    accountant: str
    library: str


class PrivacyLedger:
    """Per-user epsilon ledger with a budget over a rolling period.

    Args:
        path: SQLite file (created if missing).
        budget: epsilon allowed per ``period_days``.
        delta: the delta every epsilon is stated at.
        period_days: the rolling period (and the data horizon of training).
    """

    def __init__(
        self,
        path: str | Path,
        budget: float = 8.0,
        delta: float = 1e-5,
        period_days: float = 365.0,
    ) -> None:
        if budget <= 0 or not 0 < delta < 1 or period_days <= 0:
            raise TrainingError("`budget` and `period_days` should be > 0 and `delta` in (0, 1)")
        self.budget, self.delta, self.period_days = budget, delta, period_days
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), timeout=60.0, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS ledger(user TEXT NOT NULL, time TEXT NOT NULL, "
            "noise REAL NOT NULL, rate REAL NOT NULL, steps INTEGER NOT NULL, "
            "eps REAL NOT NULL, delta REAL NOT NULL, accountant TEXT NOT NULL, lib TEXT NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS ledger_user ON ledger(user, time)")
        self._db.commit()

    @staticmethod
    def _who(user_id: str) -> str:
        return hashlib.sha256(b"userlayer.ledger/1|" + user_id.encode()).hexdigest()[:32]

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def entries(self, user_id: str) -> list[LedgerEntry]:
        """Every entry of the user, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT time, noise, rate, steps, eps, delta, accountant, lib FROM ledger "
                "WHERE user=? ORDER BY time",
                (self._who(user_id),),
            ).fetchall()
        return [
            LedgerEntry(datetime.fromisoformat(r[0]), r[1], r[2], int(r[3]), r[4], r[5], r[6], r[7])
            for r in rows
        ]

    def _window(self, user_id: str, now: datetime) -> list[tuple[float, float, int]]:
        start = now - timedelta(days=self.period_days)
        return [
            (e.noise_multiplier, e.sample_rate, e.steps)
            for e in self.entries(user_id)
            if e.time > start
        ]

    def spent(self, user_id: str, now: datetime | None = None) -> float:
        """Epsilon the user has spent in the current period."""
        return epsilon_of(self._window(user_id, now or datetime.now(UTC)), self.delta)

    def check(
        self,
        user_id: str,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        now: datetime | None = None,
    ) -> float:
        """The epsilon after a planned training; refuses one that exceeds the budget.

        Raises:
            BudgetExceededError: with the spent, planned and allowed epsilon.
        """
        hist = self._window(user_id, now or datetime.now(UTC))
        before = epsilon_of(hist, self.delta)
        after = epsilon_of([*hist, (noise_multiplier, sample_rate, steps)], self.delta)
        if after > self.budget:
            raise BudgetExceededError(
                f"user {user_id!r}: training would bring epsilon from {before:.3f} to "
                f"{after:.3f}, over the budget {self.budget} (delta {self.delta}, "
                f"{self.period_days:g} days)"
            )
        return after

    def record(
        self,
        user_id: str,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        now: datetime | None = None,
    ) -> LedgerEntry:
        """Add a finished training; returns the entry with the epsilon after it."""
        now = now or datetime.now(UTC)
        hist = self._window(user_id, now)
        eps = epsilon_of([*hist, (noise_multiplier, sample_rate, steps)], self.delta)
        entry = LedgerEntry(
            now, noise_multiplier, sample_rate, steps, eps, self.delta, ACCOUNTANT, library()
        )
        with self._lock:
            self._db.execute(
                "INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self._who(user_id),
                    now.isoformat(),
                    noise_multiplier,
                    sample_rate,
                    steps,
                    eps,
                    self.delta,
                    ACCOUNTANT,
                    entry.library,
                ),
            )
            self._db.commit()
        return entry

    def forget(self, user_id: str) -> None:
        """Remove a user's entries."""
        with self._lock:
            self._db.execute("DELETE FROM ledger WHERE user=?", (self._who(user_id),))
            self._db.commit()
