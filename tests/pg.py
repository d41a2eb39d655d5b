"""A real PostgreSQL server for the registry and profile-store tests, started by the test set-up.

Finds the PostgreSQL binaries (installing the ``postgresql`` Debian package
with apt-get when running as root and they are missing), creates a cluster
in a temporary directory, starts it on a free 127.0.0.1 port and stops it by
its PID afterwards. Skips, saying why, only where none of that is possible.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from userlayer.tools.procs import free_port, stop_groups


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _install() -> str | None:
    """Install PostgreSQL with apt-get; None on success, else why not."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "PostgreSQL is not installed and this user cannot apt-get install it"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "postgresql"]):
        r = subprocess.run(cmd, env=env, capture_output=True, timeout=900, check=False)
        if r.returncode:
            return f"`{' '.join(cmd)}` failed: {r.stderr.decode()[-300:]}"
    return None


@dataclass
class PgServer:
    """A running cluster; ``dsn`` names its ``registry`` database."""

    bin: Path
    data: Path
    port: int
    as_user: list[str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://ul@127.0.0.1:{self.port}/registry"

    def start(self) -> None:
        log = (self.data.parent / "postgres.log").open("ab")
        self.proc = subprocess.Popen(
            [
                *self.as_user,
                str(self.bin / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.data),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60:
            r = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
                check=False,
            )
            if r.returncode == 0:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"PostgreSQL did not start; see {self.data.parent / 'postgres.log'}")

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_groups([self.proc], grace=30.0, sig=signal.SIGINT)  # PostgreSQL's fast shutdown
        self.proc = None


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    bin_dir = _bin_dir()
    if bin_dir is None:
        why = _install()
        bin_dir = _bin_dir()
        if bin_dir is None:
            pytest.skip(f"no PostgreSQL server: {why}")
    root = tmp_path_factory.mktemp("pg")
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without `runuser` to start PostgreSQL as another user")
        as_user = ["runuser", "-u", "postgres", "--"]
        os.chmod(root, 0o777)
        for p in root.parents:  # the postgres user must reach the directory
            if str(p).startswith(str(tmp_path_factory.getbasetemp().parent)):
                os.chmod(p, os.stat(p).st_mode | 0o011)
    r = subprocess.run(
        [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "ul"],
        capture_output=True,
        check=False,
    )
    if r.returncode:
        pytest.skip(f"initdb failed: {r.stderr.decode()[-300:]}")
    srv = PgServer(bin_dir, data, free_port(), as_user)
    srv.start()
    try:
        import psycopg

        with psycopg.connect(
            f"postgresql://ul@127.0.0.1:{srv.port}/postgres", autocommit=True
        ) as con:
            con.execute("CREATE DATABASE registry")
        yield srv
    finally:
        srv.stop()
