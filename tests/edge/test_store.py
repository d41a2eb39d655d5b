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
from userlayer.edge.keys import EnvKeyProvider, LocalKeyFile
from userlayer.edge.store import ProfileStore
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
        ProfileStore(db, keys=LocalKeyFile(tmp_path / "other.keks"))
    # all restored: still readable
    with ProfileStore(db) as s:
        assert len(s.events("alice")) == 3 and len(s.events("bob")) == 3


def test_rotation_rewraps_without_touching_events(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    with ProfileStore(db) as s:
        s.append(make_events("alice", 4))
        before = _rows(db)
        new = s.rotate_kek(destroy_old=True)
        assert new == "k2"
    assert _rows(db) == before  # events untouched
    keks = LocalKeyFile(tmp_path / "p.db.keks")
    assert keks.key_ids == ["k2"]  # k1 destroyed
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
    LocalKeyFile(p)
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
