"""Local processes the tools start: free ports on 127.0.0.1, and stopping process groups by PID.

Every long-lived process a tool starts (a SuperLink, SuperNodes, the API)
gets its own session (``start_new_session=True``), so that its process group
id is its PID and stopping the group also stops the children it spawned.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["free_port", "group_members", "stop_groups"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid`` (Linux ``/proc``)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(d.name))
    return out


def stop_groups(
    procs: Sequence[subprocess.Popen[bytes]],
    grace: float = 10.0,
    sig: signal.Signals = signal.SIGTERM,
) -> None:
    """Send ``sig`` to each process's group, wait up to ``grace`` s, then SIGKILL what is left.

    The group is signalled even when its leader is gone: children may remain.
    """
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, sig)
    deadline = time.monotonic() + grace
    for p in procs:
        while group_members(p.pid) and time.monotonic() < deadline:
            p.poll()
            time.sleep(0.1)
        if group_members(p.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        p.wait(grace)
