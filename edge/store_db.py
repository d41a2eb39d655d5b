"""The profile store's two databases: an embedded SQLite file, or PostgreSQL for a backend.

Both take ``?`` placeholders and run explicit transactions in three modes:

- ``read``: a consistent view of one user's rows;
- ``write``: appends, settings, a new data key (many at once on PostgreSQL);
- ``keys``: a change of the store's keys (forget, KEK rotation, a new store
  key): it runs alone, so no transaction can see half of it.

SQLite serialises every writer (``BEGIN IMMEDIATE``), so ``write`` and
``keys`` are the same there. PostgreSQL takes a transaction-level advisory
lock on the store: shared for ``read`` and ``write``, exclusive for ``keys``.
Concurrent ``write`` transactions that create the same row resolve it with
``ON CONFLICT`` (the caller re-reads what is stored).

A PostgreSQL store lives in its own schema (default ``userlayer_profile``),
so it shares a database with other tables (the registry's, a backend's own)
without clashing names; several stores can sit in one database under
different schemas.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from userlayer.edge.exceptions import StoreError

__all__ = ["TABLES", "PostgresDb", "SqliteDb", "StoreDb", "is_postgres_url", "open_db"]

TxMode = Literal["read", "write", "keys"]

# {blob}: the binary type; {seq}: the events' ordering key, made by the database
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value {blob} NOT NULL);
CREATE TABLE IF NOT EXISTS deks(
    user_ref {blob} PRIMARY KEY, kek_id TEXT NOT NULL, wrapped {blob} NOT NULL,
    uid {blob} NOT NULL);
CREATE TABLE IF NOT EXISTS events(
    seq {seq}, rid {blob} NOT NULL UNIQUE, user_ref {blob} NOT NULL,
    service TEXT NOT NULL, blob {blob} NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_user ON events(user_ref, seq);
CREATE TABLE IF NOT EXISTS settings(
    user_ref {blob} NOT NULL, name TEXT NOT NULL, blob {blob} NOT NULL,
    PRIMARY KEY(user_ref, name));
CREATE TABLE IF NOT EXISTS signing_keys(user_ref {blob} PRIMARY KEY, blob {blob} NOT NULL);
"""
TABLES = frozenset({"meta", "deks", "events", "settings", "signing_keys"})
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def is_postgres_url(where: str | Path) -> bool:
    """Whether ``where`` names a PostgreSQL database rather than a SQLite file.

    Raises:
        StoreError: for another URL (``scheme://...``): never taken for a file name.
    """
    if not isinstance(where, str) or "://" not in where:
        return False
    if where.lower().startswith(("postgresql://", "postgres://")):
        return True
    scheme = where.split("://", 1)[0]
    raise StoreError(
        f"a profile store is a SQLite file or a postgresql:// URL, not a {scheme}:// URL"
    )


def _conninfo(url: str) -> dict[str, Any] | None:
    """The URL's connection parameters, or None if it does not parse."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        return dict(conninfo_to_dict(url))
    except Exception:
        return None


def _redact(url: str) -> str:
    """Where the URL points, without its password (for messages and reports)."""
    d = _conninfo(url)
    if d is None:  # unparsable: say nothing of it but the scheme
        return url.split("://", 1)[0] + "://(unparsable)"
    user = f"{d['user']}@" if d.get("user") else ""
    port = f":{d['port']}" if d.get("port") else ""
    return f"postgresql://{user}{d.get('host', '')}{port}/{d.get('dbname', '')}"


def _without_password(text: str, url: str) -> str:
    """``text`` (a driver's message) with the URL's password blanked out."""
    pw = str((_conninfo(url) or {}).get("password") or "")
    text = text.strip()
    return text.replace(pw, "***") if pw else text


class StoreDb:
    """One connection to the store's database (see the module docstring)."""

    where: str = ""
    blob_type = ""  # SCHEMA's {blob} in this database
    seq_type = ""  # SCHEMA's {seq}: the events' ordering key, made by the database

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        """Run one statement; returns a cursor (``fetchone``, ``fetchall``, ``rowcount``)."""
        raise NotImplementedError

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Run one statement for each row."""
        raise NotImplementedError

    def begin(self, mode: TxMode) -> None:
        """Start a transaction in ``mode``."""
        raise NotImplementedError

    def commit(self) -> None:
        """Commit the open transaction."""
        self.execute("COMMIT")

    def rollback(self) -> None:
        """Roll the open transaction back."""
        self.execute("ROLLBACK")

    def tables(self) -> set[str]:
        """Names of the tables already in the store's namespace."""
        raise NotImplementedError

    def create_schema(self) -> None:
        """Create the tables that are missing (inside a ``keys`` transaction)."""
        for stmt in SCHEMA.format(blob=self.blob_type, seq=self.seq_type).split(";"):
            if stmt.strip():
                self.execute(stmt)

    def after_delete(self) -> None:
        """Push deleted rows out of the write-ahead log where the database can (no transaction)."""

    def size_bytes(self) -> int:
        """Bytes the store takes in the database (after ``after_delete``)."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the connection."""
        raise NotImplementedError


class SqliteDb(StoreDb):
    """A SQLite file in WAL mode with ``secure_delete`` on."""

    blob_type, seq_type = "BLOB", "INTEGER PRIMARY KEY"

    def __init__(self, path: Path, synchronous: str) -> None:
        self.path = path
        self.where = str(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(
            path, timeout=60.0, isolation_level=None, check_same_thread=False
        )
        try:
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute(f"PRAGMA synchronous={synchronous}")
            self._con.execute("PRAGMA secure_delete=ON")
        except sqlite3.DatabaseError as e:
            self._con.close()
            raise StoreError(f"{path}: not a profile store ({e})") from e

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> Any:  # noqa: D102
        return self._con.execute(sql, args)

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:  # noqa: D102
        self._con.executemany(sql, rows)

    def begin(self, mode: TxMode) -> None:  # noqa: D102
        self._con.execute("BEGIN" if mode == "read" else "BEGIN IMMEDIATE")

    def tables(self) -> set[str]:  # noqa: D102
        return {
            r[0] for r in self._con.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }

    def after_delete(self) -> None:  # noqa: D102
        self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def size_bytes(self) -> int:  # noqa: D102
        return sum(
            p.stat().st_size
            for p in (self.path, self.path.with_name(self.path.name + "-wal"))
            if p.exists()
        )

    def close(self) -> None:  # noqa: D102
        self._con.close()


class PostgresDb(StoreDb):
    """A PostgreSQL database; the store's tables in their own schema.

    One connection in autocommit mode with explicit transactions; every
    statement is bounded by ``statement_timeout``, and a database error
    becomes a :class:`StoreError` that names the database (never its
    password).
    """

    blob_type, seq_type = "BYTEA", "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"

    def __init__(
        self, url: str, schema: str, connect_timeout: float, statement_timeout_ms: int
    ) -> None:
        if not _SCHEMA_NAME.fullmatch(schema):
            raise StoreError(
                f"`schema` should match {_SCHEMA_NAME.pattern} (a plain PostgreSQL name), "
                f"got {schema!r}"
            )
        try:
            import psycopg
        except ImportError as e:  # pragma: no cover - the edge extra declares it
            raise StoreError("a PostgreSQL profile store needs psycopg: pip install psycopg") from e
        self._errors: tuple[type[BaseException], ...] = (psycopg.Error,)
        self.where = f"{_redact(url)} (schema {schema})"
        self.schema = schema
        # the lock of this store: one 64-bit key per schema (any database, same name: same key)
        digest = hashlib.sha256(b"userlayer.profile|" + schema.encode()).digest()
        self._lock_key = int.from_bytes(digest[:8], "big", signed=True)
        try:
            self._con = psycopg.connect(
                url,
                autocommit=True,
                connect_timeout=max(1, round(connect_timeout)),
                options=f"-c statement_timeout={statement_timeout_ms}",
            )
        except psycopg.Error as e:
            raise StoreError(
                f"{self.where}: cannot connect ({_without_password(str(e), url)})"
            ) from e
        self.execute(f"SET search_path TO {schema}")

    @contextmanager
    def _store_errors(self) -> Iterator[None]:
        """The driver's errors as :class:`StoreError` naming the database."""
        try:
            yield
        except self._errors as e:
            raise StoreError(f"{self.where}: {type(e).__name__}: {str(e).strip()}") from e

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> Any:  # noqa: D102
        with self._store_errors():
            return self._con.execute(sql.replace("?", "%s"), args)

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:  # noqa: D102
        with self._store_errors(), self._con.cursor() as cur:
            cur.executemany(sql.replace("?", "%s"), rows)

    def begin(self, mode: TxMode) -> None:  # noqa: D102
        from psycopg.pq import TransactionStatus

        if self._con.info.transaction_status != TransactionStatus.IDLE:
            self.rollback()  # never run inside a transaction a failed operation left open
        self.execute("BEGIN")
        lock = "pg_advisory_xact_lock" if mode == "keys" else "pg_advisory_xact_lock_shared"
        try:
            self.execute(f"SELECT {lock}(?)", (self._lock_key,))
        except BaseException:
            self.rollback()
            raise

    def rollback(self) -> None:  # noqa: D102
        if self._con.closed:  # a broken connection has no transaction left to end
            return
        self.execute("ROLLBACK")

    def tables(self) -> set[str]:  # noqa: D102
        rows = self.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ?",
            (self.schema,),
        ).fetchall()
        return {r[0] for r in rows}

    def create_schema(self) -> None:  # noqa: D102
        self.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
        super().create_schema()

    def size_bytes(self) -> int:  # noqa: D102
        row = self.execute(
            "SELECT coalesce(sum(pg_total_relation_size(quote_ident(table_schema) || '.' ||"
            " quote_ident(table_name))), 0) FROM information_schema.tables"
            " WHERE table_schema = ?",
            (self.schema,),
        ).fetchone()
        return int(row[0])

    def close(self) -> None:  # noqa: D102
        self._con.close()


def open_db(
    where: str | Path,
    synchronous: str = "NORMAL",
    schema: str = "userlayer_profile",
    connect_timeout: float = 10.0,
    statement_timeout_ms: int = 30_000,
) -> StoreDb:
    """A SQLite file (a path) or a PostgreSQL database (a ``postgresql://`` URL)."""
    if is_postgres_url(where):
        return PostgresDb(str(where), schema, connect_timeout, statement_timeout_ms)
    return SqliteDb(Path(where), synchronous)
