"""The edge store killed (SIGKILL) while it writes: every acknowledged event survives intact.

A writer process appends batches of events without pause and prints an
acknowledgement after each ``append`` returns; the test kills it by PID at a
random moment (almost always inside the next transaction), starts another
writer on the same files, and repeats. Afterwards the database passes
SQLite's integrity check, every row decrypts, every acknowledged batch is
complete, and no batch is half-written (a batch is one transaction).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from userlayer.edge.store import ProfileStore

BATCH = 20
USERS = 7

WRITER = """
import sys
from datetime import datetime, timedelta, timezone
from userlayer.edge.store import ProfileStore
from userlayer.sdk.schemas import Action, Event, Service

path, cycle, batch, users = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
store = ProfileStore(path)
t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
i = 0
while True:
    user = f"u{i % users}"
    evs = [
        Event(
            user_id=user,
            service=Service.SAMOKAT,
            item_id=f"it-{cycle}-{i}-{j}",
            action=Action.PURCHASE,
            timestamp=t0 + timedelta(seconds=i * batch + j),
        )
        for j in range(batch)
    ]
    store.append(evs)
    print(f"ack {cycle} {i} {user}", flush=True)
    i += 1
"""


def _run_and_kill(path: Path, cycle: int, acks_wanted: int) -> list[tuple[int, int, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(cycle), str(BATCH), str(USERS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    acks = []
    deadline = time.monotonic() + 120
    try:
        assert proc.stdout is not None
        while len(acks) < acks_wanted and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            _, c, i, user = line.split()
            acks.append((int(c), int(i), user))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: group id == PID
        proc.wait(timeout=30)
    assert len(acks) == acks_wanted, proc.stderr.read() if proc.stderr else ""
    return acks


def test_killed_writers_lose_no_acknowledged_event(tmp_path: Path) -> None:
    path = tmp_path / "profiles.db"
    rng = random.Random(0)
    acked: list[tuple[int, int, str]] = []
    for cycle in range(4):
        acked += _run_and_kill(path, cycle, rng.randint(5, 40))
    ok = sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0]
    assert ok == "ok"
    with ProfileStore(path) as store:
        batches: dict[tuple[int, int], set[str]] = defaultdict(set)
        for u in store.users():
            for e in store.events(u):  # every row decrypts and verifies, or this raises
                _, c, i, j = e.item_id.split("-")
                assert e.user_id == f"u{int(i) % USERS}"
                batches[(int(c), int(i))].add(j)
        for c, i, _user in acked:
            assert batches[(c, i)] == {str(j) for j in range(BATCH)}, (c, i)
        # whatever was committed beyond the last acknowledgement is whole too
        assert all(len(js) == BATCH for js in batches.values())
        assert store.count() == BATCH * len(batches) >= BATCH * len(acked)
