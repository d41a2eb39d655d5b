"""Local processes the tools start: free ports on 127.0.0.1, and stopping process groups by PID.

Every long-lived process a tool starts (a SuperLink, SuperNodes, the API)
gets its own session (``start_new_session=True``), so that its process group
id is its PID and stopping the group also stops the children it spawned; a
watchdog (:mod:`userlayer.tools.reaper`) stops them if the tool is killed first.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from userlayer.tools.exceptions import ToolsError
from userlayer.tools.reaper import reap_on_exit, release

__all__ = [
    "ApiProcess",
    "console_script",
    "free_port",
    "group_members",
    "stop_groups",
    "userlayer_command",
]


def console_script(name: str) -> str:
    """The console script next to this interpreter (a venv), else from $PATH.

    Raises:
        ToolsError: ``name`` is neither.
    """
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise ToolsError(f"`{name}` not found next to {sys.executable} or on PATH")
    return found


def userlayer_command() -> list[str]:
    """The ``userlayer`` command: its console script, else this interpreter running the CLI.

    The second serves a source tree mapped onto ``PYTHONPATH`` without an
    install (a lent GPU machine's image, say), where no console script exists.
    """
    try:
        return [console_script("userlayer")]
    except ToolsError:
        return [sys.executable, "-m", "userlayer.tools.cli"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid`` (psutil; any POSIX system)."""
    import psutil

    out = []
    for p in psutil.process_iter(["status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                out.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            continue  # gone meanwhile
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


class ApiProcess:
    """``userlayer serve`` as a subprocess on 127.0.0.1 with a fresh admin key.

    Settings come from ``env`` (``USERLAYER_*`` variables); the process runs in
    its own session and :meth:`stop` ends its group by PID.
    """

    def __init__(
        self, model: Path, registry: Path | str, log: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.key = f"ul_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
        full_env = dict(os.environ, USERLAYER_ADMIN_KEY=self.key, **(env or {}))
        cmd = [*userlayer_command(), "serve", "--model", str(model)]
        cmd += ["--registry", str(registry), "--port", str(self.port)]
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603 - our own console script
                cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
            )
        self.reaper = reap_on_exit([self.proc.pid])  # stops it if we are killed first
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log

    def wait_ready(self, timeout: float = 120.0, path: str = "/readyz") -> None:
        """Wait until ``path`` answers 200 (``/healthz``: alive, even with the store down).

        Raises:
            ToolsError: the process exited or was not ready in time.
        """
        import httpx

        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise ToolsError(f"the API exited with {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(f"{self.url}{path}", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise ToolsError(f"the API was not ready after {timeout:.0f} s; see {self.log}")

    def stop(self) -> None:
        """Stop the server's process group (SIGTERM, then SIGKILL after a grace period)."""
        stop_groups([self.proc], grace=20.0)
        release(self.reaper)

    def __enter__(self) -> ApiProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
