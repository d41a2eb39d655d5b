"""The watchdog stops a tool's child process groups when the tool is killed first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil

from userlayer.tools.procs import group_members

# An "owner" that starts a process group (a leader with a child of its own, as the
# SuperLink starts Flower's simulation), hands it to the watchdog, prints the PIDs and waits.
OWNER = """
import json, subprocess, sys, time
from userlayer.tools.reaper import reap_on_exit
child = "[sys.executable, '-c', 'import time; time.sleep(300)']"
code = f"import subprocess, sys, time; subprocess.Popen({child}); time.sleep(300)"
leader = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
reaper = reap_on_exit([leader.pid])
time.sleep(1.5)  # the child is up
print(json.dumps({"leader": leader.pid, "reaper": reaper.pid}), flush=True)
if sys.argv[1] == "clean":
    from userlayer.tools.procs import stop_groups
    sys.stdin.readline()  # the test has looked at the group
    stop_groups([leader], grace=5.0)
    reaper.wait(15)
    print("reaper exited", reaper.returncode, flush=True)
else:
    time.sleep(300)
"""


def _start(mode: str) -> tuple[subprocess.Popen[str], dict[str, int], list[psutil.Process]]:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    pids = json.loads(owner.stdout.readline())
    group = [psutil.Process(p) for p in group_members(pids["leader"])]
    assert len(group) == 2  # the leader and its child
    return owner, pids, group


def test_killed_owner_has_its_groups_stopped() -> None:
    owner, pids, group = _start("kill")
    try:
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        _, alive = psutil.wait_procs(group, timeout=20)
        assert not alive, f"still running after the owner died: {alive}"
        psutil.Process(pids["reaper"]).wait(20)  # and the watchdog exits
    finally:
        for p in group:
            if p.is_running():
                p.kill()


def test_watchdog_leaves_by_itself_when_the_owner_stops_its_groups() -> None:
    owner, _, group = _start("clean")
    assert owner.stdout is not None and owner.stdin is not None
    owner.stdin.write("stop\n")
    owner.stdin.flush()
    t0 = time.monotonic()
    assert owner.stdout.readline().strip() == "reaper exited 0"
    assert owner.wait(10) == 0 and time.monotonic() - t0 < 20
    assert not any(p.is_running() for p in group)
