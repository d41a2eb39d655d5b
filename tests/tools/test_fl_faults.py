"""Federated rounds with 30% of nodes dropping out and the server killed between rounds.

``userlayer fl simulate`` runs as its own process (Flower's simulation
engine: the ServerApp and a virtual node per user). Each sampled node drops
out with probability 0.3. When round 1's checkpoint is on disk the whole run
is killed (SIGKILL, by PID, every process it started), in the middle of
round 2, and the same command is started again. The run must go on from the
checkpoint and finish; afterwards the ledgers agree with each other:

- the server's checkpoint and ``progress.jsonl`` list rounds 1, 2, 3 once each;
- every round's valid replies are in the registry as packages of that round's
  version, and nothing else is (what the killed round had stored is discarded
  and the round runs again);
- the shared part's privacy ledger has one entry per aggregated round, and
  the reported epsilon is the accountant's value for it;
- each user's edge ledger holds at least one training per stored package,
  and the epsilon in every package's manifest is one of the ledger's values.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from userlayer.cloud.fl.server import open_registry
from userlayer.edge.privacy import PrivacyLedger
from userlayer.edge.store import ProfileStore
from userlayer.sdk.privacy import Mechanism, epsilon
from userlayer.tools.procs import console_script, group_members, stop_groups

ROUNDS = 3
USERS = 8


def _kill_everything(proc: subprocess.Popen[bytes]) -> int:
    """SIGKILL the run's process group and every process it started (Ray may re-parent)."""
    kids = psutil.Process(proc.pid).children(recursive=True)
    stop_groups([proc], grace=30.0, sig=signal.SIGKILL)
    for k in kids:
        with contextlib.suppress(psutil.NoSuchProcess):
            k.kill()
    _gone, alive = psutil.wait_procs(kids, timeout=30)
    assert not alive, alive
    return len(kids) + 1


@pytest.mark.slow
def test_dropouts_and_a_killed_server_lose_nothing(
    tmp_path: Path, synth_data_dir: Path, tiny_model_dir: Path
) -> None:
    wd = tmp_path / "fl"
    cmd = [console_script("userlayer"), "fl", "simulate", "--data", str(synth_data_dir)]
    cmd += ["--model", str(tiny_model_dir), "--workdir", str(wd), "--rounds", str(ROUNDS)]
    cmd += ["--users-per-round", str(USERS), "--population", str(USERS), "--dropout", "0.3"]
    cmd += ["--epochs", "1", "--min-replies", "1", "--epsilon-per-round", "1.0"]
    env = dict(os.environ, RAY_DEDUP_LOGS="0")
    state_file = wd / "server" / "state.json"
    with (tmp_path / "run1.log").open("wb") as log:
        first = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        t0 = time.monotonic()
        while not state_file.exists() and time.monotonic() - t0 < 400:
            assert first.poll() is None, (tmp_path / "run1.log").read_text()[-3000:]
            time.sleep(0.2)
        assert state_file.exists(), "round 1 did not finish in time"
    finally:
        killed = _kill_everything(first)
    assert not group_members(first.pid)
    assert json.loads(state_file.read_text())["round"] < ROUNDS  # killed mid-run
    second = subprocess.run(
        cmd, capture_output=True, env=env, timeout=500, check=False, start_new_session=True
    )
    assert second.returncode == 0, second.stdout.decode()[-3000:] + second.stderr.decode()[-3000:]

    state = json.loads(state_file.read_text())
    rounds = state["rounds"]
    progress = [json.loads(x) for x in (wd / "progress.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1)) and state["round"] == ROUNDS
    assert [r["round"] for r in progress] == [r["round"] for r in rounds]
    sampled = sum(r["sampled"] for r in rounds)
    dropped = sum(r["dropped"] for r in rounds)
    print(
        f"\nfl faults: {killed} processes killed after round {rounds[0]['round']}; "
        f"{ROUNDS} rounds, {sampled} sampled, {dropped} dropped, "
        f"{sum(r['valid'] for r in rounds)} valid, {sum(r['rejected'] for r in rounds)} rejected"
    )
    assert sampled == ROUNDS * USERS and 0 < dropped < sampled
    assert all(r["valid"] + r["dropped"] + r["rejected"] == r["sampled"] for r in rounds)

    # registry: exactly the valid replies of each round, as that round's version
    reg = open_registry(wd)
    by_version: dict[int, set[str]] = {}
    packages = []
    for service in ("samokat", "megamarket", "kuper"):
        for user in reg.users(service):
            for v in reg.versions(service, user):
                by_version.setdefault(v, set()).add(user)
                packages.append((service, user, v))
    assert {v: len(u) for v, u in by_version.items()} == {
        r["round"]: r["valid"] for r in rounds if r["valid"]
    }

    # the shared part's ledger
    aggregated = [r for r in rounds if r["aggregated"]]
    assert len(state["dp_history"]) == len(aggregated) > 0
    hist = [Mechanism(float(a), float(b), int(c)) for a, b, c in state["dp_history"]]
    assert aggregated[-1]["epsilon"] == pytest.approx(epsilon(hist, 1e-5), rel=1e-9)

    # each user's edge ledger against the packages stored for them
    with ProfileStore(wd / "store.db") as store:
        ledger = PrivacyLedger(wd / "ledger.db", store.ledger_key())
    try:
        for service, user, _ in packages:
            entries = ledger.entries(user)
            assert len(entries) >= len({x for s, u, x in packages if u == user and s == service})
            info = reg.info(service, user)  # the newest version, as stored and verified
            assert info is not None and info.privacy is not None
            assert any(abs(e.epsilon_after - info.privacy["epsilon"]) < 1e-9 for e in entries), (
                user,
                info.version,
            )
    finally:
        ledger.close()
        reg.close()
