"""The profile store on a real PostgreSQL server: the SQLite store's guarantees, many writers.

Each test gets its own schema in the server's ``registry`` database (so the
store also shows it sits beside other tables), and its own KEK file.
"""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.edge.conftest import make_events
from tests.pg import PgServer
from userlayer.edge.exceptions import ProfileDecryptError, StoreError
from userlayer.edge.store import ProfileStore
from userlayer.sdk.crypto import LocalKeyFile
from userlayer.sdk.exceptions import DecryptError

CANARY = "CANARYpg5x9"


@pytest.fixture
def pg(postgres: PgServer, tmp_path: Path) -> Iterator[tuple[str, str, LocalKeyFile]]:
    """(dsn, schema, keys) of a fresh store; its schema is dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield postgres.dsn, schema, LocalKeyFile(tmp_path / "keks", create=True)
    with psycopg.connect(postgres.dsn, autocommit=True) as con:
        con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _open(pg: tuple[str, str, LocalKeyFile]) -> ProfileStore:
    dsn, schema, keys = pg
    return ProfileStore(dsn, keys=keys, schema=schema)


def _sql(
    dsn: str, schema: str, sql: str, args: tuple[object, ...] = ()
) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute(f"SET search_path TO {schema}")
        cur = con.execute(sql, args)  # type: ignore[arg-type]
        return list(cur.fetchall()) if cur.description else []


def test_round_trip_beside_other_tables(pg: tuple[str, str, LocalKeyFile]) -> None:
    dsn, schema, _ = pg
    with psycopg.connect(dsn, autocommit=True) as con:  # a backend's own table, same database
        con.execute("CREATE TABLE IF NOT EXISTS public.events(id int)")
    with _open(pg) as s:
        ev = make_events("alice", 5) + make_events("bob", 3, service="kuper")
        assert s.append(list(reversed(ev))) == 8
        assert s.events("alice") == ev[:5]  # every field survives, in time order
        assert s.count() == 8 and s.count("bob") == 3 and s.users() == ["alice", "bob"]
        s.set_setting("alice", "consent", {"samokat": True})
        key = s.signing_key("alice")
        assert key is not None
        assert "postgresql" in s.where and schema in s.where
    with _open(pg) as s2:  # reopened: the same keys, settings and signing key
        assert s2.events("bob") == ev[5:]
        assert s2.setting("alice", "consent") == {"samokat": True}
        again = s2.signing_key("alice", create=False)
        assert again is not None and again.public_key() == key.public_key()
    assert _sql(dsn, "public", "SELECT count(*) FROM public.events") == [(0,)]


def test_needs_keys_and_a_plain_schema_name(postgres: PgServer, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="needs `keys`"):
        ProfileStore(postgres.dsn)
    keys = LocalKeyFile(tmp_path / "keks", create=True)
    with pytest.raises(StoreError, match="`schema` should match"):
        ProfileStore(postgres.dsn, keys=keys, schema="x; DROP TABLE y")


def test_unreachable_database_names_it_without_the_password(tmp_path: Path) -> None:
    keys = LocalKeyFile(tmp_path / "keks", create=True)
    url = "postgresql://ul:s3cret@127.0.0.1:1/profiles?connect_timeout=2"
    with pytest.raises(StoreError, match="cannot connect") as err:
        ProfileStore(url, keys=keys)
    assert "s3cret" not in str(err.value) and "127.0.0.1:1/profiles" in str(err.value)


def test_nothing_readable_in_the_database_or_on_disk(
    pg: tuple[str, str, LocalKeyFile], postgres: PgServer
) -> None:
    dsn, schema, _ = pg
    ev = [
        e.model_copy(update={"item_id": f"{CANARY}{i}", "user_id": f"{CANARY}user"})
        for i, e in enumerate(make_events("x", 20))
    ]
    with _open(pg) as s:
        s.append(ev)
        s.set_setting(f"{CANARY}user", "consent", {"note": CANARY})
        assert s.events(f"{CANARY}user")[0].item_id.startswith(CANARY)
    # every column of every table, as PostgreSQL prints it
    tables = [
        r[0]
        for r in _sql(dsn, schema, "SELECT tablename FROM pg_tables WHERE schemaname=%s", (schema,))
    ]
    assert set(tables) == {"meta", "deks", "events", "settings", "signing_keys"}
    for t in tables:
        for row in _sql(dsn, schema, f"SELECT * FROM {t}"):
            for v in row:
                raw = v if isinstance(v, bytes) else str(v).encode()
                assert CANARY.encode() not in raw, f"{t}: {v!r}"
    # and the server's files (heap, WAL) after a checkpoint
    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute("CHECKPOINT")
    hits = subprocess.run(
        ["grep", "-rl", "--binary-files=text", CANARY, str(postgres.data)],
        capture_output=True,
        check=False,
    )
    assert hits.stdout == b"", hits.stdout.decode()
    assert hits.returncode == 1, hits.stderr.decode()  # 1: searched everything, no match


def test_a_row_moved_to_another_user_fails_authentication(
    pg: tuple[str, str, LocalKeyFile],
) -> None:
    dsn, schema, _ = pg
    with _open(pg) as s:
        s.append(make_events("alice", 2) + make_events("bob", 2))
    rows = _sql(dsn, schema, "SELECT seq, user_ref, blob FROM events ORDER BY seq")
    (seq_a, ref_a, blob_a), _, (seq_b, ref_b, _), _ = rows
    assert ref_a != ref_b
    _sql(dsn, schema, "UPDATE events SET blob=%s WHERE seq=%s", (blob_a, seq_b))
    with _open(pg) as s, pytest.raises(ProfileDecryptError, match="authentication failed"):
        s.events("bob")
    bad = bytearray(blob_a)  # type: ignore[arg-type]
    bad[20] ^= 1
    _sql(dsn, schema, "UPDATE events SET blob=%s WHERE seq=%s", (bytes(bad), seq_a))
    with _open(pg) as s, pytest.raises(ProfileDecryptError, match="authentication failed"):
        s.events("alice")


def test_bad_input_loses_nothing(pg: tuple[str, str, LocalKeyFile]) -> None:
    with _open(pg) as s:
        s.append(make_events("alice", 2))
        with pytest.raises(StoreError, match=r"events\[1\] is a dict"):
            s.append([make_events("alice", 1)[0], {"user_id": "alice"}])  # type: ignore[list-item]
        assert s.count() == 2


def test_many_writers_on_the_same_users_lose_nothing(pg: tuple[str, str, LocalKeyFile]) -> None:
    """Eight store instances append to overlapping users at once: one data key per user."""
    users = [f"u{k}" for k in range(6)]
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def writer(w: int) -> None:
        try:
            with _open(pg) as s:
                start.wait()
                for r in range(5):
                    batch = []
                    for u in reversed(users) if w % 2 else users:  # opposite orders
                        batch += make_events(u, 2, item_prefix=f"w{w}r{r}i")
                    s.append(batch)
                    s.signing_key(users[(w + r) % len(users)])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    dsn, schema, _ = pg
    assert _sql(dsn, schema, "SELECT count(*) FROM deks") == [(len(users),)]
    with _open(pg) as s:
        assert s.count() == 8 * 5 * len(users) * 2
        for u in users:
            assert len(s.events(u)) == 8 * 5 * 2  # every row decrypts with the one key


def test_forget_while_another_instance_writes(pg: tuple[str, str, LocalKeyFile]) -> None:
    """A forget (and its KEK rotation) in one instance; appends in another never break."""
    dsn, schema, keys = pg
    with _open(pg) as a:
        a.append(make_events("alice", 5) + make_events("bob", 2))
    before = _sql(dsn, schema, "SELECT kek_id, wrapped, user_ref FROM deks")
    stop, writing = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    written = [0]

    def write() -> None:
        try:
            with _open(pg) as b:
                while not stop.is_set():
                    written[0] += b.append(make_events("carol", 3))
                    writing.set()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
            writing.set()

    t = threading.Thread(target=write)
    t.start()
    assert writing.wait(60)  # the forget runs while the other instance is appending
    try:
        with _open(pg) as a:
            rep = a.forget("alice")
            assert rep.events_deleted == 5 and rep.kek_rotated
    finally:
        stop.set()
        t.join(60)
    assert not errors, errors
    with _open(pg) as c:
        assert c.users() == ["bob", "carol"] and c.events("alice") == []
        assert len(c.events("carol")) == written[0] and len(c.events("bob")) == 2
    # crypto-shredding: a copy of the wrapped keys taken before needs a destroyed KEK
    for kek_id, wrapped, ref in before:
        with pytest.raises(DecryptError):
            keys.unwrap(str(kek_id), bytes(wrapped), b"userlayer.dek/1|" + bytes(ref))  # type: ignore[arg-type]


def test_a_lost_connection_is_a_store_error_and_keeps_data(
    pg: tuple[str, str, LocalKeyFile],
) -> None:
    dsn, _, _ = pg
    s = _open(pg)
    s.append(make_events("alice", 3))
    pid = s._db.execute("SELECT pg_backend_pid()").fetchone()[0]
    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(StoreError, match="registry"):
        s.append(make_events("alice", 1))
    s.close()
    with _open(pg) as s2:
        assert s2.count("alice") == 3


def test_a_failed_check_leaves_no_lock_held(
    pg: tuple[str, str, LocalKeyFile], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: an error right after BEGIN kept the transaction and its advisory lock open."""
    from psycopg.pq import TransactionStatus

    s = _open(pg)
    s.append(make_events("alice", 2) + make_events("bob", 1))
    real = ProfileStore._generation
    calls = {"n": 0}

    def flaky(self: ProfileStore) -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise StoreError("connection hiccup")
        return real(self)

    monkeypatch.setattr(ProfileStore, "_generation", flaky)
    with pytest.raises(StoreError, match="hiccup"):
        s.append(make_events("alice", 1))
    monkeypatch.setattr(ProfileStore, "_generation", real)
    assert s._db._con.info.transaction_status == TransactionStatus.IDLE  # type: ignore[attr-defined]
    with _open(pg) as other:  # a forget needs the exclusive lock: nobody holds it
        assert other.forget("bob").events_deleted == 1
    assert s.count() == 2
    s.close()
