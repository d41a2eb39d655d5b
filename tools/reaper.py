"""Stop a tool's child processes when the tool itself dies without stopping them.

``userlayer fl simulate`` and the demo start a SuperLink (which starts Flower's
simulation process and Ray) and the API in their own sessions, and stop those
process groups on exit. A tool killed by SIGKILL (the OOM killer, ``kill
-9``) runs no exit code: its children would keep running, holding ports,
memory and Ray's workers. :func:`reap_on_exit` starts this module as a small
watchdog process in a session of its own: it polls every ``POLL`` seconds,
remembers every descendant of the watched groups' leaders (Ray re-parents
some), and once the owner is gone it sends SIGTERM to the groups and those
descendants, waits ``GRACE`` seconds, then SIGKILLs what is left. It exits by
itself when the watched processes are all gone (the owner stopped them). Only
the PIDs it was given and their descendants are signalled, never by name.

Run as ``python -m userlayer.tools.reaper OWNER_PID PID [PID ...]``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psutil

__all__ = ["reap_on_exit"]

POLL = 0.5
GRACE = 10.0


def reap_on_exit(pids: Sequence[int], owner: int | None = None) -> subprocess.Popen[bytes]:
    """Start the watchdog for the process groups led by ``pids`` (each its own session).

    ``owner`` (default: this process) is the process whose death triggers the
    reaping. Stop the watchdog (``terminate()``) before stopping the groups
    normally, or leave it: it exits once they are gone.
    """
    return subprocess.Popen(  # noqa: S603 - this interpreter and module, no shell
        [
            sys.executable,
            "-m",
            "userlayer.tools.reaper",
            str(owner or os.getpid()),
            *map(str, pids),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # outlives a signal sent to the owner's process group
    )


def _gone(proc: psutil.Process | None) -> bool:
    import psutil

    try:
        return proc is None or not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def watch(owner: int, leaders: Sequence[int]) -> int:
    """Watch until the owner dies (then reap; returns how many were signalled) or all are gone."""
    import psutil

    from userlayer.tools.procs import group_members

    seen: dict[int, psutil.Process] = {}
    try:
        owner_proc: psutil.Process | None = psutil.Process(owner)
    except psutil.NoSuchProcess:
        owner_proc = None  # gone before we looked: reap at once
    while True:
        for pid in leaders:
            with contextlib.suppress(psutil.Error):
                for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
                    seen.setdefault(p.pid, p)
        if _gone(owner_proc):
            break
        if not any(group_members(pid) for pid in leaders) and not any(
            p.is_running() for p in seen.values()
        ):
            return 0
        time.sleep(POLL)
    live = [p for p in seen.values() if p.is_running()]  # is_running checks the start time
    for pid in leaders:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    for p in live:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, left = psutil.wait_procs(live, timeout=GRACE)
    for pid in leaders:
        if group_members(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    return len(live)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``OWNER_PID PID [PID ...]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or not all(a.isdigit() for a in args):
        print("usage: python -m userlayer.tools.reaper OWNER_PID PID [PID ...]", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the owner's to handle
    watch(int(args[0]), [int(a) for a in args[1:]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
