"""Run the rounds on Flower's Deployment Engine: a SuperLink and SuperNodes as processes.

The same ServerApp (``userlayer.cloud.fl.server:app``) and ClientApp
(``userlayer.edge.flower:app``) as the simulation, started by the real
``flower-superlink`` / ``flower-supernode`` / ``flwr run`` commands. A
Flower App directory only names them: :func:`write_app` writes one.

:class:`LocalFederation` starts one SuperLink and some SuperNodes on
127.0.0.1 with insecure transport (for tests, demos and a laptop; a real
deployment uses TLS and node authentication, see the README), submits a run
and waits for its final status. ``flwr run`` exits 0 even when the ServerApp
fails, so :meth:`LocalFederation.wait` reads the run's status from the
SuperLink and raises unless it is ``finished:completed``. Every process it
starts is its own process group and is stopped by that PID on exit.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from userlayer.tools.exceptions import ToolsError
from userlayer.tools.procs import console_script, free_port, stop_groups
from userlayer.tools.reaper import reap_on_exit, release

__all__ = ["APP_PYPROJECT", "LocalFederation", "NodeSpec", "write_app"]

APP_PYPROJECT = """\
# A Flower App that runs userlayer's federated rounds (written by `userlayer fl app`).
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "userlayer-rounds"
version = "0.1.0"
description = "userlayer federated rounds: the ServerApp and ClientApp of the userlayer package"
license = "Apache-2.0"
dependencies = ["userlayer"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "userlayer"

[tool.flwr.app.components]
serverapp = "userlayer.cloud.fl.server:app"
clientapp = "userlayer.edge.flower:app"

[tool.flwr.app.config]
# the server's work directory (fl.json, server/, registry/, trust/); or $USERLAYER_FL_WORKDIR
workdir = ""
"""


def write_app(out: str | Path) -> Path:
    """Write a Flower App directory (``pyproject.toml``) for ``flwr run``; returns it."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    (d / "pyproject.toml").write_text(APP_PYPROJECT, encoding="utf-8")
    return d


@dataclass(frozen=True)
class NodeSpec:
    """One SuperNode: its work directory and the users whose profiles it holds."""

    workdir: Path
    users: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.users:
            raise ToolsError("a SuperNode needs at least one user")
        bad = [u for u in self.users if not u or "," in u or "'" in u]
        if bad:
            raise ToolsError(f"user ids for a SuperNode must be non-empty, without , or ': {bad}")

    def node_config(self) -> str:
        """The ``--node-config`` string."""
        return f"workdir='{self.workdir}' users='{','.join(self.users)}'"


def _toml_args(values: Mapping[str, int | float | bool | str]) -> str:
    """``k=v`` pairs with TOML values, as ``flwr run --federation-config`` reads them."""
    out = []
    for k, v in values.items():
        if isinstance(v, bool):
            out.append(f"{k}={'true' if v else 'false'}")
        elif isinstance(v, int | float):
            out.append(f"{k}={v}")
        else:
            out.append(f"{k}={json.dumps(v)}")
    return " ".join(out)


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise ToolsError(f"process exited with {proc.returncode}; see {log}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise ToolsError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s; see {log}")


@dataclass
class LocalFederation:
    """A SuperLink and SuperNodes on 127.0.0.1 (insecure), stopped on exit by their PIDs.

    With ``simulation`` the SuperLink runs Flower's Simulation Runtime itself
    (``flower-superlink --simulation``: virtual SuperNodes on Ray, in a
    subprocess it starts) and ``nodes`` is empty; a run then takes its
    ``federation_config`` (``num-supernodes``, resources).
    """

    home: Path
    nodes: list[NodeSpec]
    start_timeout: float = 60.0
    simulation: bool = False
    # set in every process it starts; a simulation's virtual nodes take their workdir from
    # $USERLAYER_FL_WORKDIR here, never from the run's config (which the submitter controls)
    env: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list, init=False)
    port: int = field(default=0, init=False)
    # one per process started: stop it if this process is killed first (userlayer.tools.reaper)
    reapers: list[subprocess.Popen[bytes]] = field(default_factory=list, init=False)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["FLWR_HOME"] = str(self.home / "flwr")
        env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
        # the SuperLink and SuperNodes start flwr-serverapp / flwr-clientapp from $PATH
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env | self.env

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = self.home / f"{name}.log"
        with log.open("ab") as out:
            p = subprocess.Popen(  # noqa: S603 - our own flwr console scripts, no shell
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=self.home,
                start_new_session=True,  # its own process group: stopped with its children
            )
        self.procs.append(p)
        self.reapers.append(reap_on_exit([p.pid]))  # watched from its first moment
        return p

    def start(self) -> LocalFederation:
        """Start the SuperLink, wait for it, then the SuperNodes."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "flwr").mkdir(exist_ok=True)
        self.port = free_port()
        (self.home / "flwr" / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n',
            encoding="utf-8",
        )
        link = self._spawn(
            "superlink",
            [
                console_script("flower-superlink"),
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--database",
                str(self.home / "superlink.db"),
                *(["--simulation", "--isolation", "subprocess"] if self.simulation else []),
            ],
        )
        try:
            _wait_port(self.port, self.start_timeout, link, self.home / "superlink.log")
            for i, n in enumerate(self.nodes):
                self._spawn(
                    f"supernode-{i}",
                    [
                        console_script("flower-supernode"),
                        "--insecure",
                        "--superlink",
                        f"127.0.0.1:{self.port}",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(free_port()),
                        "--node-config",
                        n.node_config(),
                    ],
                )
        except BaseException:
            self.stop()
            raise
        return self

    def _flwr(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        r = subprocess.run(  # noqa: S603 - the flwr console script, no shell
            [console_script("flwr"), *args, "--format", "json"],
            capture_output=True,
            env=self._env(),
            cwd=self.home,
            timeout=timeout,
            check=False,
        )
        text = r.stdout.decode("utf-8", "replace")
        try:
            out: dict[str, Any] = json.loads(text[text.index("{") :])
        except ValueError as e:
            raise ToolsError(
                f"`flwr {args[0]}` gave no JSON (exit {r.returncode}): "
                f"{text[-500:]}{r.stderr.decode('utf-8', 'replace')[-500:]}"
            ) from e
        if not out.get("success", False):
            raise ToolsError(f"`flwr {args[0]}` failed: {out.get('error-message', out)}")
        return out

    def run(
        self,
        app_dir: str | Path,
        run_config: dict[str, str],
        federation_config: Mapping[str, int | float | bool | str] | None = None,
    ) -> str:
        """Submit a run of the Flower App in ``app_dir``; returns its run id."""
        cfg = " ".join(f"{k}='{v}'" for k, v in run_config.items())
        args = ["run", str(Path(app_dir).resolve()), "local", "--run-config", cfg]
        if federation_config:
            args += ["--federation-config", _toml_args(federation_config)]
        return str(self._flwr(*args)["run-id"])

    def status(self, run_id: str) -> dict[str, Any]:
        """The SuperLink's record of the run (``status`` like ``finished:completed``)."""
        runs = self._flwr("ls", "local", "--run-id", run_id)["runs"]
        if not runs:
            raise ToolsError(f"the SuperLink does not know run {run_id}")
        return dict(runs[0])

    def wait(self, run_id: str, timeout: float) -> dict[str, Any]:
        """Wait for the run to finish; raise unless it completed successfully."""
        t0 = time.monotonic()
        while True:
            st = self.status(run_id)
            if str(st["status"]).startswith("finished"):
                break
            if time.monotonic() - t0 > timeout:
                raise ToolsError(
                    f"run {run_id} still {st['status']} after {timeout:.0f} s; "
                    f"see {self.home / 'superlink.log'}"
                )
            time.sleep(2.0)
        if st["status"] != "finished:completed":
            raise ToolsError(
                f"run {run_id} ended {st['status']} ({st.get('status-details')}); "
                f"see {self.home / 'superlink.log'}"
            )
        return st

    def stop(self, grace: float = 10.0) -> None:
        """Stop every process this federation started (its process group, by PID)."""
        stop_groups(list(reversed(self.procs)), grace)
        self.procs.clear()
        for r in self.reapers:
            release(r)
        self.reapers.clear()

    def __enter__(self) -> LocalFederation:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
