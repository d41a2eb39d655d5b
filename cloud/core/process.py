"""The engine core as a child process: started, awaited, restarted when it crashes, stopped.

``userlayer serve`` starts one :class:`EngineProcess` and then the API
workers. A supervisor thread waits on the child: when it exits other than
by a requested stop (a crash, the OOM killer), it is started again after a
back-off (0.5 s doubling to 30 s, reset after a minute of health) and the
workers reconnect at their next request; meanwhile they answer 503 with
``Retry-After``. The child stays in the caller's process group, so stopping
the group by PID stops it too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from userlayer.cloud.core.wire import hello
from userlayer.cloud.exceptions import CloudError

__all__ = ["EngineProcess"]

log = logging.getLogger(__name__)

PING_EVERY_S = 5.0
HANG_S = 30.0  # a batch takes well under a second; this long without an answer is a hang


class EngineProcess:
    """``python -m userlayer.cloud.core --socket PATH`` with settings from ``env``."""

    def __init__(
        self,
        socket_path: str | Path,
        env: Mapping[str, str] | None = None,
        log_file: IO[bytes] | None = None,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.env = dict(os.environ if env is None else env)
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._spawn_lock = threading.Lock()
        self._supervisor: threading.Thread | None = None

    def _spawn(self) -> bool:
        """Start the child unless :meth:`stop` was called; whether it started."""
        cmd = [sys.executable, "-m", "userlayer.cloud.core", "--socket", str(self.socket_path)]
        with self._spawn_lock:
            if self._stopping.is_set():
                return False
            self.proc = subprocess.Popen(  # noqa: S603 - our own module, no shell
                cmd, env=self.env, stdout=self.log_file, stderr=self.log_file
            )
            return True

    def start(self, timeout: float = 300.0) -> dict[str, Any]:
        """Start the core, wait until it answers, then supervise it; returns its ``hello``.

        Raises:
            CloudError: it exited or did not answer within ``timeout`` s.
        """
        self._spawn()
        info = self._wait(timeout)
        self._supervisor = threading.Thread(
            target=self._supervise, name="userlayer-engine-supervisor", daemon=True
        )
        self._supervisor.start()
        return info

    def _wait(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stopping.is_set():
            if self.proc.poll() is not None:
                raise CloudError(f"the engine core exited with {self.proc.returncode}")
            with contextlib.suppress(CloudError):
                return hello(self.socket_path, min(2.0, deadline - time.monotonic()))
        raise CloudError(f"the engine core did not answer within {timeout:g} s")

    def _watch(self, proc: subprocess.Popen[bytes]) -> int:
        """Wait for ``proc`` to exit, killing it once it has not answered for ``HANG_S``."""
        last_answer = time.monotonic()
        while True:
            try:
                return proc.wait(PING_EVERY_S)
            except subprocess.TimeoutExpired:
                pass
            if self._stopping.is_set():
                return proc.wait()
            try:
                hello(self.socket_path, PING_EVERY_S)
                last_answer = time.monotonic()
            except CloudError:
                if time.monotonic() - last_answer > HANG_S:
                    log.error("the engine core has not answered for %.0f s; killing it", HANG_S)
                    proc.kill()

    def _supervise(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            assert self.proc is not None
            started = time.monotonic()
            rc = self._watch(self.proc)
            if self._stopping.is_set():
                return
            if time.monotonic() - started > 60:
                backoff = 0.5
            log.error("the engine core exited with %s; restarting in %.1f s", rc, backoff)
            if self._stopping.wait(backoff):
                return
            backoff = min(30.0, backoff * 2)
            if not self._spawn():
                return
            try:
                self._wait(300.0)
            except CloudError as e:
                log.error("the restarted engine core failed: %s", e)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` s; the supervisor restarts nothing after."""
        with self._spawn_lock:  # no new child after this
            self._stopping.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(grace)
        if self._supervisor is not None:
            self._supervisor.join(grace)

    def __enter__(self) -> EngineProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
