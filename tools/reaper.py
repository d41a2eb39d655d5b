"""Stop a tool's child processes when the tool itself dies without stopping them.

``userlayer fl simulate`` and the demo start a SuperLink (which starts Flower's
simulation process and Ray) and the API in their own sessions, and stop those
process groups on exit. A tool killed by SIGKILL (the OOM killer, ``kill
-9``) runs no exit code: its children would keep running, holding ports,
memory and Ray's workers. :func:`reap_on_exit` starts this module as a small
watchdog process in a session of its own: it polls every ``POLL`` seconds,
remembers every descendant of the watched groups' leaders (Ray moves some
into sessions of their own), and once the owner is gone it sends SIGTERM to
the groups and those descendants, waits ``GRACE`` seconds, then SIGKILLs
what is left. After a normal stop the owner calls :func:`release`: the
watchdog stops the descendants that left their group, then exits (it also
exits when everything it watches has ended). The leaders are resolved once,
as children of the owner leading their own group, and processes are held as
``psutil`` handles, which check a PID's start time: a reused PID is never
signalled. Nothing is signalled by name.

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

__all__ = ["reap_on_exit", "release"]

POLL = 0.5
GRACE = 10.0


def reap_on_exit(pids: Sequence[int], owner: int | None = None) -> subprocess.Popen[bytes]:
    """Start the watchdog for the process groups led by ``pids`` (each its own session).

    ``owner`` (default: this process) is the process whose death triggers the
    reaping. After stopping the groups normally, call :func:`release`: the
    watchdog then stops any descendant that left its group (Ray's) and exits.
    """
    return subprocess.Popen(  # noqa: S603 - this interpreter and module, no shell
        [
            sys.executable,
            "-P",  # not the working directory first on sys.path: nothing planted there runs
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


def release(watchdog: subprocess.Popen[bytes], timeout: float = GRACE + 5) -> None:
    """After a normal stop: the watchdog stops what is left of its tree now, then exits."""
    if watchdog.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            watchdog.send_signal(signal.SIGUSR1)
    try:
        watchdog.wait(timeout)
    except subprocess.TimeoutExpired:
        watchdog.kill()
        watchdog.wait(5)


def _gone(proc: psutil.Process | None) -> bool:
    import psutil

    try:
        return proc is None or not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _leaders(owner: int, pids: Sequence[int]) -> list[psutil.Process]:
    """The watched leaders, resolved once: children of the owner that lead their own group."""
    import psutil

    out = []
    for pid in pids:
        if pid <= 1 or pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            p = psutil.Process(pid)
            if p.ppid() == owner and os.getpgid(pid) == pid:
                out.append(p)
    return out


class _Released:
    """Set by SIGUSR1: the owner stopped the groups itself; reap what is left, then exit."""

    now = False

    @classmethod
    def handler(cls, signum: int, frame: object) -> None:
        cls.now = True


def watch(owner: int, leader_pids: Sequence[int]) -> int:
    """Watch until the owner dies or releases it (then reap; returns how many were signalled).

    Returns 0 without signalling anything when every watched process ends by itself.
    """
    import psutil

    try:
        owner_proc: psutil.Process | None = psutil.Process(owner)
    except psutil.NoSuchProcess:
        owner_proc = None  # gone before we looked: reap at once
    leaders = _leaders(owner, leader_pids)
    seen: dict[int, psutil.Process] = {p.pid: p for p in leaders}
    while True:
        for p in [q for q in seen.values() if not _gone(q)]:  # live ones: no reused PIDs
            with contextlib.suppress(psutil.Error):
                for c in p.children(recursive=True):
                    if c.pid not in seen or _gone(seen[c.pid]):
                        seen[c.pid] = c
        if _Released.now or _gone(owner_proc):
            break
        if all(_gone(p) for p in seen.values()):
            return 0
        time.sleep(POLL)
    live = [p for p in seen.values() if not _gone(p)]
    for p in leaders:
        if not _gone(p):  # the group still has its leader: its PGID is not reused
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
    for p in live:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, left = psutil.wait_procs(live, timeout=GRACE)
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
    signal.signal(signal.SIGUSR1, _Released.handler)
    watch(int(args[0]), [int(a) for a in args[1:]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
