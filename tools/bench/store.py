"""``userlayer bench store``: edge store append and read-back throughput, bytes per event.

Beside it, in the same run, the same events in a plain (unencrypted) SQLite
table in WAL mode with the same payload encoding and parsing: the alternative
a backend would start from, so the cost of encryption is a ratio measured
side by side. With ``--url postgresql://...`` the same two rows again on that
PostgreSQL database (each repeat in a fresh schema, dropped afterwards).
"""

from __future__ import annotations

import secrets
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from userlayer.edge.store import ProfileStore, _event, _payload
from userlayer.edge.store_db import _redact
from userlayer.sdk.crypto import LocalKeyFile
from userlayer.sdk.schemas import Action, Context, Event, Service
from userlayer.tools.bench.report import BenchReport

__all__ = ["StoreBenchConfig", "bench_store"]

Run = tuple[float, float, float, float]  # append s, read s, bytes per event, forget s (or NaN)


@dataclass(frozen=True)
class StoreBenchConfig:
    """Size of the run."""

    events: int = 100_000
    users: int = 1_000
    batch: int = 1_000
    repeats: int = 3
    url: str | None = None  # a PostgreSQL database for the second pair of rows

    def __post_init__(self) -> None:
        if min(self.events, self.users, self.batch, self.repeats) < 1:
            raise ValueError("StoreBenchConfig: events, users, batch and repeats should be >= 1")
        if self.url is not None and not self.url.startswith(("postgresql://", "postgres://")):
            raise ValueError(
                f"StoreBenchConfig.url should be a postgresql:// URL, got {self.url!r}"
            )


def _events(cfg: StoreBenchConfig) -> list[Event]:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    services = list(Service)
    out = []
    for i in range(cfg.events):
        ts = t0 + timedelta(minutes=i)
        out.append(
            Event.model_construct(
                user_id=f"user{i % cfg.users}",
                service=services[i % 3],
                item_id=f"item{(i * 7919) % 50_000}",
                action=Action.PURCHASE,
                timestamp=ts,
                quantity=1,
                price=99.0,
                context=Context.from_timestamp(ts, geo_cell="u4pruyd"),
            )
        )
    return out


def _plain(path: Path, events: list[Event], batch: int) -> Run:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute("CREATE TABLE ev(seq INTEGER PRIMARY KEY, user TEXT, service TEXT, payload BLOB)")
    con.execute("CREATE INDEX ev_user ON ev(user, seq)")
    t = time.perf_counter()
    for s in range(0, len(events), batch):
        con.execute("BEGIN")
        con.executemany(
            "INSERT INTO ev(user, service, payload) VALUES (?, ?, ?)",
            [(e.user_id, e.service.value, _payload(e)) for e in events[s : s + batch]],
        )
        con.execute("COMMIT")
    append = time.perf_counter() - t
    users = sorted({e.user_id for e in events})
    t = time.perf_counter()
    n = 0
    for u in users:
        rows = con.execute("SELECT service, payload FROM ev WHERE user=? ORDER BY seq", (u,))
        n += len([_event(u, svc, p) for svc, p in rows.fetchall()])
    read = time.perf_counter() - t
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return append, read, path.stat().st_size / len(events), float("nan")


def _encrypted(store: ProfileStore, events: list[Event], batch: int) -> Run:
    with store:
        t = time.perf_counter()
        for s in range(0, len(events), batch):
            store.append(events[s : s + batch])
        append = time.perf_counter() - t
        users = store.users()
        t = time.perf_counter()
        n = sum(len(store.events(u)) for u in users)
        read = time.perf_counter() - t
        assert n == len(events)
        store._db.after_delete()
        size = store._db.size_bytes()
        # forgetting one user re-keys every other user's pseudonym and rotates the KEK:
        # its cost grows with the number of users, not with the user's events
        t = time.perf_counter()
        store.forget(users[0])
        forget = time.perf_counter() - t
    return append, read, size / len(events), forget


def _plain_pg(url: str, schema: str, events: list[Event], batch: int) -> Run:
    import psycopg

    with psycopg.connect(url, autocommit=True) as con:
        con.execute(f"CREATE SCHEMA {schema}")
        con.execute(f"SET search_path TO {schema}")
        con.execute(
            "CREATE TABLE ev(seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
            "usr TEXT, service TEXT, payload BYTEA)"
        )
        con.execute("CREATE INDEX ev_user ON ev(usr, seq)")
        t = time.perf_counter()
        for s in range(0, len(events), batch):
            with con.transaction(), con.cursor() as cur:
                cur.executemany(
                    "INSERT INTO ev(usr, service, payload) VALUES (%s, %s, %s)",
                    [(e.user_id, e.service.value, _payload(e)) for e in events[s : s + batch]],
                )
        append = time.perf_counter() - t
        users = sorted({e.user_id for e in events})
        t = time.perf_counter()
        for u in users:
            rows = con.execute("SELECT service, payload FROM ev WHERE usr=%s ORDER BY seq", (u,))
            [_event(u, svc, bytes(p)) for svc, p in rows.fetchall()]
        read = time.perf_counter() - t
        size = con.execute("SELECT pg_total_relation_size('ev')").fetchone()
        assert size is not None
    return append, read, int(size[0]) / len(events), float("nan")


def _in_schema(url: str, run: Callable[[str], Run]) -> Run:
    """Run in a fresh schema of ``url``, dropped afterwards."""
    import psycopg

    schema = f"bench_{secrets.token_hex(6)}"
    try:
        return run(schema)
    finally:
        with psycopg.connect(url, autocommit=True) as con:
            con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def bench_store(
    cfg: StoreBenchConfig | None = None,
    command: str = "",
    on_step: Callable[[str], None] | None = None,
) -> BenchReport:
    """Run the store benchmark; medians over ``repeats`` fresh files.

    ``on_step(name)`` reports each repeat (``repeats`` of them).
    """
    cfg = cfg or StoreBenchConfig()
    events = _events(cfg)
    res: dict[str, list[Run]] = {"encrypted": [], "plain": []}
    if cfg.url:
        res |= {"encrypted postgresql": [], "plain postgresql": []}
    url = cfg.url or ""
    for r in range(cfg.repeats):
        with tempfile.TemporaryDirectory() as d:
            store = ProfileStore(Path(d) / f"enc{r}.db")
            res["encrypted"].append(_encrypted(store, events, cfg.batch))
            res["plain"].append(_plain(Path(d) / f"plain{r}.db", events, cfg.batch))
            if cfg.url:
                kek = LocalKeyFile(Path(d) / "pg.keks", create=True)

                def enc_pg(sch: str, kek: LocalKeyFile = kek) -> Run:
                    return _encrypted(ProfileStore(url, keys=kek, schema=sch), events, cfg.batch)

                res["encrypted postgresql"].append(_in_schema(url, enc_pg))
                res["plain postgresql"].append(
                    _in_schema(url, lambda sch: _plain_pg(url, sch, events, cfg.batch))
                )
        if on_step is not None:
            on_step(f"repeat {r + 1}")
    out: dict[str, dict[str, float | None]] = {}
    rows = []
    for name, runs in res.items():
        append = statistics.median(x[0] for x in runs)
        read = statistics.median(x[1] for x in runs)
        size = statistics.median(x[2] for x in runs)
        forget = statistics.median(x[3] for x in runs)
        out[name] = {
            "append_events_per_s": len(events) / append,
            "read_events_per_s": len(events) / read,
            "bytes_per_event": size,
            "forget_one_user_s": None if forget != forget else forget,  # NaN: not measured
        }
        rows.append(
            [
                name,
                len(events) / append,
                len(events) / read,
                size,
                "" if forget != forget else f"{forget:.3f}",
            ]
        )
    notes = [
        f"{cfg.events:,} events of {cfg.users:,} users, batches of {cfg.batch}, median of "
        f"{cfg.repeats} fresh files; read = every user's events decrypted, in time order",
        f"forget: one user crypto-shredded (rows, keys, a new index key re-keying the other "
        f"{cfg.users - 1:,} users' pseudonyms, KEK rotation): it grows with the users",
    ]
    for suffix in ("", " postgresql"):
        if "encrypted" + suffix not in out:
            continue
        enc, plain = out["encrypted" + suffix], out["plain" + suffix]
        ratio = {
            k: float(enc[k] or 0) / float(plain[k] or 1)
            for k in ("append_events_per_s", "read_events_per_s")
        }
        notes.append(
            f"encrypted/plain{suffix and ' on PostgreSQL'}: append "
            f"{ratio['append_events_per_s']:.2f}x, read {ratio['read_events_per_s']:.2f}x"
        )
    if cfg.url:
        notes.append(
            "PostgreSQL: one connection per store, bytes = pg_total_relation_size of the "
            "store's tables (heap, indexes, TOAST)"
        )
    return BenchReport(
        "store",
        command or "userlayer bench store",
        ["store", "append events/s", "read events/s", "bytes/event on disk", "forget one user (s)"],
        rows,
        {"config": {**cfg.__dict__, "url": cfg.url and _redact(cfg.url)}, **out},
        notes,
    )
