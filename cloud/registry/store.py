"""The registry's SQL database: SQLite in a directory, or PostgreSQL shared by replicas.

Both take ``?`` placeholders. SQLite is one connection behind a lock
(``BEGIN IMMEDIATE`` transactions, WAL, ``secure_delete``). PostgreSQL is a
``psycopg_pool`` pool opened lazily, so an API replica starts (and answers
its health checks) while the database is down; every connection has a
connect timeout, a server ``statement_timeout``, TCP keepalives and a
``tcp_user_timeout``, and a circuit breaker fails calls at once while the
database keeps failing (:class:`~userlayer.cloud.registry.types.StoreConfig`).
The schema is made (or upgraded) on the first connection that works.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from userlayer.cloud.registry.types import RegistryError, StoreConfig, StoreUnavailableError
from userlayer.sdk.exceptions import AdapterError, CryptoError

__all__ = ["SqlStore"]

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
    "CREATE TABLE IF NOT EXISTS ul_revoked (key_id TEXT NOT NULL, service TEXT NOT NULL,"
    " user_id TEXT NOT NULL, PRIMARY KEY (key_id, service, user_id))",
]
# columns added after format 1; each enrollment gets a random id, so a package verified
# against an enrollment that was deleted (or deleted and made again) meanwhile is refused
_UPGRADES = [("ul_signers", "enrollment", "BIGINT NOT NULL DEFAULT 0")]
# passed through: the domain's own errors are no outage
_DOMAIN = (RegistryError, CryptoError, AdapterError)


class Cursor:
    """A DB-API cursor taking ``?`` placeholders on either database."""

    def __init__(self, cur: Any, q: Callable[[str], str]) -> None:
        self.cur, self.q = cur, q

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> Cursor:
        """Run one statement."""
        self.cur.execute(self.q(sql), args)
        return self

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Run one statement for each row."""
        self.cur.executemany(self.q(sql), rows)

    def fetchone(self) -> Any:
        """The next row, or None."""
        return self.cur.fetchone()

    def fetchall(self) -> list[Any]:
        """Every remaining row."""
        return list(self.cur.fetchall())


class SqlStore:
    """The registry's database (see the module docstring)."""

    def __init__(self, url: str, cfg: StoreConfig | None = None) -> None:
        self.url = url
        self.cfg = cfg or StoreConfig()
        self.pg = url.startswith(("postgresql://", "postgres://"))
        self._lock = threading.RLock()
        self._conn: Any = None  # SQLite
        self._pool: Any = None  # PostgreSQL
        self._schema_ready = False
        self._failures = 0
        self._open_until = 0.0
        if not self.pg:  # a local file: open it now, errors are configuration errors
            with self.tx():
                pass

    # -- connections

    def _sqlite(self) -> Any:
        if self._conn is None:
            conn = sqlite3.connect(self.url, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("PRAGMA secure_delete=ON")  # deleted users leave no bytes behind
            self._conn = conn
        return self._conn

    def _pg_pool(self) -> Any:
        if self._pool is None:
            from psycopg_pool import ConnectionPool

            c = self.cfg
            self._pool = ConnectionPool(
                self.url,
                min_size=1,
                max_size=c.pool_size,
                timeout=c.pool_timeout_s,
                open=False,
                reconnect_timeout=3600.0,
                kwargs={
                    "connect_timeout": max(1, round(c.connect_timeout_s)),
                    "options": f"-c statement_timeout={c.statement_timeout_ms}",
                    "keepalives": 1,
                    "keepalives_idle": 5,
                    "keepalives_interval": 2,
                    "keepalives_count": 2,
                    "tcp_user_timeout": c.tcp_user_timeout_ms,
                },
            )
            self._pool.open(wait=False)
        return self._pool

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.pg else sql

    def _ensure_schema(self, cur: Any) -> None:
        if self._schema_ready:
            return
        if self.pg:  # replicas starting together would deadlock on their DDL locks
            cur.execute("SELECT pg_advisory_xact_lock(7733205)")
        for stmt in _SCHEMA:
            cur.execute(stmt.format(blob="BYTEA" if self.pg else "BLOB"))
        for table, column, decl in _UPGRADES:
            if self.pg:
                cur.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {decl}")
            else:
                cols = {r[1] for r in cur.execute(f"PRAGMA table_info({table})").fetchall()}
                if column not in cols:
                    cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        self._schema_ready = True

    # -- the circuit breaker

    @property
    def breaker_open(self) -> bool:
        """Whether calls fail at once now (too many failures in a row, cooling down)."""
        return self._open_until > time.monotonic()

    def note_timeout(self) -> None:
        """Count a call the caller gave up waiting for (a hung store) as a failure."""
        self._failed()

    def _check_breaker(self) -> None:
        wait = self._open_until - time.monotonic()
        if wait > 0:
            raise StoreUnavailableError(
                f"registry store failed {self._failures} times in a row; "
                f"not trying again for {wait:.1f} s"
            )

    def _failed(self) -> None:
        self._failures += 1
        if self._failures >= self.cfg.breaker_failures:
            self._open_until = time.monotonic() + self.cfg.breaker_cooldown_s

    def _succeeded(self) -> None:
        self._failures = 0
        self._open_until = 0.0

    # -- transactions

    @contextmanager
    def tx(self) -> Iterator[Cursor]:
        """A transaction (BEGIN IMMEDIATE on SQLite); store failures are StoreUnavailableError.

        Raises:
            StoreUnavailableError: the database failed, timed out, or the breaker is open.
        """
        self._check_breaker()
        try:
            if self.pg:
                with self._pg_tx() as cur:
                    yield cur
            else:
                with self._lock, self._sqlite_tx() as cur:
                    yield cur
        except _DOMAIN:
            raise
        except StoreUnavailableError:
            self._failed()
            raise
        except Exception as e:  # sqlite3.Error, psycopg.Error, pool timeouts
            self._failed()
            raise StoreUnavailableError(f"registry store error: {e}") from e
        self._succeeded()

    @contextmanager
    def _sqlite_tx(self) -> Iterator[Cursor]:
        conn = self._sqlite()
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            self._ensure_schema(cur)
            yield Cursor(cur, self._q)
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    @contextmanager
    def _pg_tx(self) -> Iterator[Cursor]:
        pool = self._pg_pool()
        with pool.connection(timeout=self.cfg.pool_timeout_s) as conn, conn.transaction():
            cur = conn.cursor()
            self._ensure_schema(cur)
            yield Cursor(cur, self._q)

    def lock_user(self, cur: Cursor, service: str, user_id: str) -> None:
        """Serialise changes to one user's rows until the transaction ends.

        PostgreSQL: a transaction-scoped advisory lock (read-committed would let two
        check-then-insert transactions both pass); SQLite's write transaction is
        exclusive already.
        """
        if self.pg:
            cur.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (f"{service}|{user_id}",)
            )

    def lock_keys(self, cur: Cursor) -> None:
        """Block new wrapped keys until the transaction ends (before destroying a KEK)."""
        if self.pg:
            cur.execute("LOCK TABLE ul_users IN SHARE ROW EXCLUSIVE MODE")

    @property
    def for_update(self) -> str:
        """``" FOR UPDATE"`` on PostgreSQL (a row lock); SQLite's write transaction is exclusive."""
        return " FOR UPDATE" if self.pg else ""

    def checkpoint(self) -> None:
        """SQLite: fold the WAL into the database, so deleted rows leave no old copies there."""
        if self.pg:
            return
        with self._lock:
            self._sqlite().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        """Close the connection (or the pool)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._pool is not None:
                self._pool.close()
                self._pool = None
