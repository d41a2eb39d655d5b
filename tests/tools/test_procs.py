"""Finding the commands that tests, benches and the API bench start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from userlayer.tools import procs
from userlayer.tools.exceptions import ToolsError


def test_without_a_console_script_the_cli_runs_as_a_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = sys.executable
    assert procs.userlayer_command() == [procs.console_script("userlayer")]  # installed here
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python3"))  # nothing beside it
    monkeypatch.setenv("PATH", str(tmp_path))  # nor on the PATH
    with pytest.raises(ToolsError, match="`userlayer` not found"):
        procs.console_script("userlayer")
    cmd = procs.userlayer_command()
    assert cmd == [str(tmp_path / "python3"), "-m", "userlayer.tools.cli"]
    done = subprocess.run(
        [real, *cmd[1:], "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0 and "pretrain" in done.stdout
