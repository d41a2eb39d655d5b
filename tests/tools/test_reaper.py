"""The watchdog stops a tool's child process groups when the tool is killed first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil

# An "owner" that starts a process group: a leader with a child in its group and one that
# left it (its own session, as some of Ray's processes do), hands the leader to the
# watchdog, prints the PIDs, then waits ("kill") or stops the group and releases ("clean").
OWNER = """
import json, subprocess, sys, time
from userlayer.tools.reaper import reap_on_exit, release
sleep = "[sys.executable, '-c', 'import time; time.sleep(300)']"
code = (
    f"import subprocess, sys, time; subprocess.Popen({sleep}); "
    f"subprocess.Popen({sleep}, start_new_session=True); time.sleep(300)"
)
leader = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
reaper = reap_on_exit([leader.pid])
print(json.dumps({"leader": leader.pid, "reaper": reaper.pid}), flush=True)
if sys.argv[1] == "clean":
    from userlayer.tools.procs import stop_groups
    sys.stdin.readline()  # the test has looked at the tree
    stop_groups([leader], grace=5.0)
    release(reaper)
    print("reaper exited", reaper.returncode, flush=True)
else:
    time.sleep(300)
"""


def _start(mode: str) -> tuple[subprocess.Popen[str], psutil.Process, list[psutil.Process]]:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    pids = json.loads(owner.stdout.readline())
    reaper = psutil.Process(pids["reaper"])
    leader = psutil.Process(pids["leader"])
    deadline = time.monotonic() + 30
    while len(leader.children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    tree = [leader, *leader.children()]
    assert len(tree) == 3  # the leader, its child in the group, and the one that left it
    assert sum(os.getpgid(p.pid) == leader.pid for p in tree) == 2
    time.sleep(2 * 0.5 + 0.5)  # two of the watchdog's polls: it has seen the whole tree
    return owner, reaper, tree


def _cleanup(owner: subprocess.Popen[str], tree: list[psutil.Process]) -> None:
    for p in [psutil.Process(owner.pid) if owner.poll() is None else None, *tree]:
        if p is not None and p.is_running():
            p.kill()


def test_killed_owner_has_its_tree_stopped() -> None:
    owner, reaper, tree = _start("kill")
    try:
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        _, alive = psutil.wait_procs(tree, timeout=20)
        assert not alive, f"still running after the owner died: {alive}"
        reaper.wait(20)  # and the watchdog exits
    finally:
        _cleanup(owner, tree)


def test_a_released_watchdog_stops_what_left_the_group_and_exits() -> None:
    owner, _, tree = _start("clean")
    try:
        assert owner.stdout is not None and owner.stdin is not None
        owner.stdin.write("stop\n")
        owner.stdin.flush()
        t0 = time.monotonic()
        assert owner.stdout.readline().strip() == "reaper exited 0"
        assert owner.wait(10) == 0 and time.monotonic() - t0 < 30
        _, alive = psutil.wait_procs(tree, timeout=10)
        assert not alive  # the group by stop_groups, the escaped child by the watchdog
    finally:
        _cleanup(owner, tree)
