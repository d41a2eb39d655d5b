"""The encrypted profile store: crypto negative table, canary scan, concurrency, forgetting."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.edge.conftest import make_events
from userlayer.edge.exceptions import KeyProviderError, ProfileDecryptError, StoreError
from userlayer.edge.store import ProfileStore
from userlayer.sdk.crypto import EnvKeyProvider, LocalKeyFile
from userlayer.sdk.schemas import Event

CANARY = "CANARYzq8x7"


def test_round_trip_in_time_order(tmp_path: Path) -> None:
    with ProfileStore(tmp_path / "p.db") as s:
        ev = make_events("alice", 5) + make_events("bob", 3, service="kuper")
        assert s.append(list(reversed(ev))) == 8
        got = s.events("alice")
        assert [e.item_id for e in got] == [f"i{k}" for k in range(5)]
        assert got == ev[:5]  # every field survives, including context and price
        assert s.count() == 8 and s.count("bob") == 3 and s.count("nobody") == 0
        assert s.users() == ["alice", "bob"]
        assert s.events("nobody") == []
        assert [e.item_id for e in s.events("alice", since=ev[2].timestamp)] == ["i2", "i3", "i4"]
        assert s.events("bob", services=["samokat"]) == []
        exported = s.export("bob")
        assert len(exported) == 3 and exported[0]["service"] == "kuper"
        json.dumps(exported)


def test_refuses_non_events_and_keeps_what_is_stored(tmp_path: Path) -> None:
    with ProfileStore(tmp_path / "p.db") as s:
        s.append(make_events("alice", 2))
        with pytest.raises(StoreError, match=r"events\[1\] is a dict"):
            s.append([make_events("alice", 1)[0], {"user_id": "alice"}])  # type: ignore[list-item]
        assert s.count() == 2


def test_nothing_readable_on_disk(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    s = ProfileStore(db)
    ev = [
        e.model_copy(update={"item_id": f"{CANARY}{i}"})
        for i, e in enumerate(make_events("carol", 20))
    ]
    s.append(ev)
    assert s.events("carol")[0].item_id.startswith(CANARY)
    files = [p for p in tmp_path.iterdir() if p.name.startswith("p.db")]
    assert any(p.name.endswith("-wal") for p in files)
    for p in files:
        data = p.read_bytes()
        for needle in (CANARY.encode(), b"carol", b"u4pruyd", b"purchase"):
            assert needle not in data, f"{needle!r} readable in {p.name}"
    s.close()


def _rows(db: Path) -> list[tuple[int, bytes]]:
    con = sqlite3.connect(db)
    rows = con.execute("SELECT seq, blob FROM events ORDER BY seq").fetchall()
    con.close()
    return rows


def _update(db: Path, sql: str, args: tuple[object, ...]) -> None:
    con = sqlite3.connect(db)
    con.execute(sql, args)
    con.commit()
    con.close()


def test_crypto_negative_table(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    with ProfileStore(db) as s:
        s.append(make_events("alice", 3) + make_events("bob", 3))
    rows = _rows(db)
    (seq_a, blob_a), (_, blob_a2), _, (seq_b, blob_b) = rows[:4]

    def reopen_and_read(user: str, match: str) -> None:
        with ProfileStore(db) as s2, pytest.raises(ProfileDecryptError, match=match):
            s2.events(user)

    # tampered: one bit flipped in the ciphertext
    bad = bytearray(blob_a)
    bad[20] ^= 1
    _update(db, "UPDATE events SET blob=? WHERE seq=?", (bytes(bad), seq_a))
    reopen_and_read("alice", "authentication failed")
    _update(db, "UPDATE events SET blob=? WHERE seq=?", (blob_a, seq_a))
    # truncated
    _update(db, "UPDATE events SET blob=? WHERE seq=?", (blob_a[:15], seq_a))
    reopen_and_read("alice", "truncated")
    _update(db, "UPDATE events SET blob=? WHERE seq=?", (blob_a, seq_a))
    # swapped between users: bob's ciphertext in alice's row
    _update(db, "UPDATE events SET blob=? WHERE seq=?", (blob_b, seq_a))
    reopen_and_read("alice", "authentication failed")
    _update(db, "UPDATE events SET blob=? WHERE seq=?", (blob_a, seq_a))
    # moved to another record of the same user (wrong associated data: record id)
    _update(db, "UPDATE events SET blob=? WHERE seq=?", (blob_a, seq_a + 1))
    reopen_and_read("alice", "authentication failed")
    _update(db, "UPDATE events SET blob=? WHERE seq=?", (blob_a2, seq_a + 1))
    # wrong associated data: the row claims another service
    _update(db, "UPDATE events SET service='kuper' WHERE seq=?", (seq_b,))
    reopen_and_read("bob", "authentication failed")
    _update(db, "UPDATE events SET service='samokat' WHERE seq=?", (seq_b,))
    # wrong key: another KEK file
    with pytest.raises(ProfileDecryptError):
        ProfileStore(db, keys=LocalKeyFile(tmp_path / "other.keks", create=True))
    # all restored: still readable
    with ProfileStore(db) as s:
        assert len(s.events("alice")) == 3 and len(s.events("bob")) == 3


def test_rotation_rewraps_without_touching_events(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    with ProfileStore(db) as s:
        s.append(make_events("alice", 4))
        before = _rows(db)
        old = s.keys.current_id
        new = s.rotate_kek(destroy_old=True)
        assert new != old and len(new) == 17 and new.startswith("k")  # a random id
    assert _rows(db) == before  # events untouched
    keks = LocalKeyFile(tmp_path / "p.db.keks")
    assert keks.key_ids == [new]  # the old one destroyed
    with ProfileStore(db, keys=keks) as s:
        assert len(s.events("alice")) == 4


def test_forget_shreds_also_old_copies(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    with ProfileStore(db) as s:
        s.append(make_events("alice", 5) + make_events("bob", 2))
        s._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    copy = tmp_path / "copy.db"
    shutil.copy(db, copy)
    with ProfileStore(db) as s:
        rep = s.forget("alice")
        assert rep.events_deleted == 5 and rep.kek_rotated
        assert s.events("alice") == [] and s.count("alice") == 0 and s.users() == ["bob"]
        assert len(s.events("bob")) == 2
    # the copy made before forget: its wrapped keys need the destroyed KEK
    shutil.copy(tmp_path / "p.db.keks", tmp_path / "copy.db.keks")
    with pytest.raises(ProfileDecryptError, match="not held"):
        ProfileStore(copy)


def test_env_provider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USERLAYER_KEK", "ab" * 32)
    with ProfileStore(tmp_path / "p.db", keys=EnvKeyProvider()) as s:
        s.append(make_events("alice", 2))
        rep = s.forget("alice")
        assert rep.events_deleted == 2 and not rep.kek_rotated
    monkeypatch.setenv("USERLAYER_KEK", "xyz")
    with pytest.raises(KeyProviderError, match="64 hex"):
        EnvKeyProvider()


def test_key_file_permissions(tmp_path: Path) -> None:
    p = tmp_path / "k.keks"
    LocalKeyFile(p, create=True)
    assert p.stat().st_mode & 0o777 == 0o600
    os.chmod(p, 0o644)
    with pytest.raises(KeyProviderError, match="too open"):
        LocalKeyFile(p)
    p.write_text("{}")
    os.chmod(p, 0o600)
    with pytest.raises(KeyProviderError, match="not a readable KEK file"):
        LocalKeyFile(p)


def test_missing_key_file_is_an_error_not_a_new_key(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    with ProfileStore(db) as s:
        s.append(make_events("alice", 1))
    (tmp_path / "p.db.keks").unlink()
    with pytest.raises(KeyProviderError, match="KEK file missing"):
        ProfileStore(db)
    assert not (tmp_path / "p.db.keks").exists()


def test_not_a_store(tmp_path: Path) -> None:
    p = tmp_path / "x.db"
    p.write_bytes(b"garbage" * 100)
    with pytest.raises(StoreError, match="not a profile store"):
        ProfileStore(p)


def test_concurrent_threads_lose_nothing(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    ProfileStore(db).close()

    def writer(k: int) -> None:
        with ProfileStore(db) as s:
            for b in range(10):
                s.append(make_events(f"user{k % 3}", 10, item_prefix=f"w{k}b{b}_"))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with ProfileStore(db) as s:
        assert s.count() == 600
        assert sum(len(s.events(f"user{u}")) for u in range(3)) == 600


_WRITER = """
import sys
from datetime import UTC, datetime, timedelta
from userlayer.edge.store import ProfileStore
from userlayer.sdk.schemas import Event
db, k = sys.argv[1], int(sys.argv[2])
t0 = datetime(2024, 3, 1, tzinfo=UTC)
with ProfileStore(db) as s:
    for b in range(5):
        s.append([Event.parse({"user_id": "shared", "service": "kuper", "item_id": f"p{k}b{b}_{j}",
                  "action": "view", "timestamp": t0 + timedelta(minutes=j)}) for j in range(20)])
"""


def test_concurrent_processes_lose_nothing(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    ProfileStore(db).close()
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(db), str(k)]) for k in range(3)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    with ProfileStore(db) as s:
        ev = s.events("shared")
        assert len(ev) == 300
        assert len({e.item_id for e in ev}) == 300
        assert isinstance(ev[0], Event) and ev[0].timestamp.tzinfo is not None
        assert ev[0].timestamp >= datetime(2024, 1, 1, tzinfo=UTC)


# -- issue 18: KEK races, identifiable forgotten users, stale caches, signing keys -----------


def test_two_instances_forgetting_on_one_key_file_keep_the_store_readable(
    tmp_path: Path,
) -> None:
    """Defect: rotate/destroy acted on a stale in-memory key set with sequential ids, so two
    stores on one file (several backend workers) overwrote each other's newest KEK."""
    db = tmp_path / "p.db"
    users = ["alice", "bob", "carol", "dave"]
    with ProfileStore(db) as s:
        for u in users:
            s.append(make_events(u, 3))
    a, b = ProfileStore(db), ProfileStore(db)  # both loaded the key file now
    assert a.events("carol") and b.events("dave")
    a.forget("alice")
    b.forget("bob")  # b's key set is stale: it must re-read, mint a new id, keep a's key
    a.append(make_events("erin", 2))
    a.close()
    b.close()
    with ProfileStore(db) as fresh:
        assert fresh.users() == ["carol", "dave", "erin"]
        assert [len(fresh.events(u)) for u in ("carol", "dave", "erin")] == [3, 3, 2]
        assert len(fresh.keys.key_ids) == 1  # every old KEK destroyed, the current kept


def test_concurrent_forgets_and_appends_on_two_instances(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    with ProfileStore(db) as s:
        for i in range(8):
            s.append(make_events(f"u{i}", 2))
    stores = [ProfileStore(db), ProfileStore(db)]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(k, 8, 2):
                if i < 4:
                    stores[k].forget(f"u{i}")
                stores[k].append(make_events(f"new{i}", 1))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for s in stores:
        s.close()
    with ProfileStore(db) as fresh:
        kept = [f"u{i}" for i in range(4, 8)] + [f"new{i}" for i in range(8)]
        assert fresh.users() == sorted(kept)
        assert all(fresh.events(u) for u in kept)


def test_kek_ids_are_random_and_never_reused(tmp_path: Path) -> None:
    p = tmp_path / "k.keks"
    a = LocalKeyFile(p, create=True)
    b = LocalKeyFile(p)
    first = a.current_id
    ids = {first, a.rotate(), b.rotate(), a.rotate()}
    assert len(ids) == 4 and all(len(i) == 17 for i in ids)
    assert set(LocalKeyFile(p).key_ids) == ids  # nothing overwritten
    assert b.current_id == a.current_id  # b re-read the file


def test_a_forgotten_user_cannot_be_linked_in_an_old_copy(tmp_path: Path) -> None:
    """Defect: forget re-wrapped the index key instead of replacing it, so an old copy of the
    database and today's store (and key file) still showed which rows were the user's."""
    db = tmp_path / "p.db"
    with ProfileStore(db) as s:
        s.append(make_events("alice", 5) + make_events("bob", 2))
        s._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(db, tmp_path / "copy.db")
    with ProfileStore(db) as s:
        s.forget("alice")
        today = s._ref("alice")  # what today's keys say alice's reference would be
        assert s.events("bob") and len(s.events("bob")) == 2
    old = sqlite3.connect(tmp_path / "copy.db")
    refs = {bytes(r[0]) for r in old.execute("SELECT user_ref FROM events")}
    old.close()
    assert len(refs) == 2 and today not in refs


def test_other_instances_drop_cached_keys_after_forget(tmp_path: Path) -> None:
    """Defect: another store instance kept the forgotten user's data key and reference in
    RAM, and its next append went under a key that no longer existed (the events were lost)."""
    db = tmp_path / "p.db"
    with ProfileStore(db) as s:
        s.append(make_events("alice", 3) + make_events("bob", 1))
    a, b = ProfileStore(db), ProfileStore(db)
    assert len(b.events("alice")) == 3  # b caches alice's key
    a.forget("alice")
    assert b.events("alice") == []
    b.append(make_events("alice", 2, start_day=9))  # she comes back, through b
    a.close()
    b.close()
    with ProfileStore(db) as fresh:
        assert len(fresh.events("alice")) == 2 and len(fresh.events("bob")) == 1


def test_signing_keys_live_encrypted_in_the_store(tmp_path: Path) -> None:
    """Defect: edge signing keys were raw hex files named after the user."""
    from cryptography.hazmat.primitives import serialization

    db = tmp_path / "p.db"
    with ProfileStore(db) as s:
        assert s.signing_key("alice", create=False) is None
        k = s.signing_key("alice")
        assert k is not None
        again = s.signing_key("alice")
        assert again is not None
        raw = k.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        pub = k.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        assert (
            again.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            == pub
        )
        s._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        disk = b"".join(p.read_bytes() for p in tmp_path.glob("p.db*") if p.is_file())
        assert raw not in disk and raw.hex().encode() not in disk and b"alice" not in disk
        s.forget("alice")
        assert s.signing_key("alice", create=False) is None


def test_format_1_stores_are_upgraded(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    with ProfileStore(db) as s:
        s.append(make_events("alice", 2))
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value=? WHERE key='format'", (b"userlayer.profile/1",))
    con.execute("DROP TABLE signing_keys")
    con.execute("DELETE FROM meta WHERE key='generation'")
    con.commit()
    con.close()
    with ProfileStore(db) as s:
        assert len(s.events("alice")) == 2 and s.signing_key("alice") is not None
    con = sqlite3.connect(db)
    assert con.execute("SELECT value FROM meta WHERE key='format'").fetchone()[0] == (
        b"userlayer.profile/2"
    )
    con.close()


def test_a_failed_consistency_check_leaves_no_transaction_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: an error between BEGIN and the generation check kept the write lock."""
    s = ProfileStore(tmp_path / "p.db")
    s.append(make_events("alice", 2))
    real = ProfileStore._generation
    calls = {"n": 0}

    def flaky(self: ProfileStore) -> int:
        calls["n"] += 1
        if calls["n"] == 2:  # the check inside the transaction
            raise sqlite3.OperationalError("disk I/O error")
        return real(self)

    monkeypatch.setattr(ProfileStore, "_generation", flaky)
    with pytest.raises(sqlite3.OperationalError):
        s.append(make_events("alice", 1))
    monkeypatch.setattr(ProfileStore, "_generation", real)
    assert s.append(make_events("bob", 1)) == 1  # this instance goes on
    with ProfileStore(tmp_path / "p.db") as other:  # and nobody waits on a lock
        assert other.forget("bob").events_deleted == 1
    assert s.count() == 2
    s.close()


def test_a_forget_whose_rotation_failed_is_finished_at_the_next_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "p.db"
    with ProfileStore(db) as s:
        s.append(make_events("alice", 3) + make_events("bob", 1))
        s._db.after_delete()
    shutil.copy(db, tmp_path / "copy.db")  # a backup taken before the forget
    shutil.copy(tmp_path / "p.db.keks", tmp_path / "copy.db.keks")
    with ProfileStore(db) as s:

        def down() -> str:
            raise KeyProviderError("KMS unreachable")

        monkeypatch.setattr(s.keys, "rotate", down)
        rep = s.forget("alice")
        assert rep.events_deleted == 3 and not rep.kek_rotated
    # the backup still opens (its KEK lives), until the next open finishes the rotation
    shutil.copy(tmp_path / "p.db.keks", tmp_path / "copy.db.keks")
    ProfileStore(tmp_path / "copy.db").close()
    with ProfileStore(db) as s:
        assert s.users() == ["bob"]
        pending = s._db.execute("SELECT 1 FROM meta WHERE key='rotation_pending'").fetchone()
        assert pending is None
    shutil.copy(tmp_path / "p.db.keks", tmp_path / "copy.db.keks")
    with pytest.raises(ProfileDecryptError, match="not held"):
        ProfileStore(tmp_path / "copy.db")


def test_urls_that_are_not_postgresql_are_refused(tmp_path: Path) -> None:
    keys = LocalKeyFile(tmp_path / "k", create=True)
    for url in ("mysql://u:pw@h/db", "postgresql+psycopg://u:pw@h/db"):
        with pytest.raises(StoreError, match=r"not a .*:// URL") as err:
            ProfileStore(url, keys=keys)
        assert "pw" not in str(err.value)
    assert not list(Path.cwd().glob("*pw@h*"))  # no SQLite file named after it


def test_redacted_urls_keep_no_password() -> None:
    from userlayer.edge.store_db import _redact

    for url in (
        "postgresql://ul:s3cret@db.example:5433/profiles",
        "postgresql://db.example/profiles?password=s3cret&user=ul",
        "postgresql://:s3cret@db.example/profiles",
    ):
        shown = _redact(url)
        assert "s3cret" not in shown and "db.example" in shown and "profiles" in shown
