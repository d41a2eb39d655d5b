"""The wheel installs under the `userlayer` namespace and its base install has no torch."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sdk", "edge", "cloud", "tools")


def _run(*cmd: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )


def test_every_package_folder_is_declared() -> None:
    import tomllib

    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(conf["packages"])
    found = {
        "userlayer." + ".".join(p.parent.relative_to(ROOT).parts)
        for top in PACKAGES
        for p in (ROOT / top).rglob("__init__.py")
    }
    assert found == declared


@pytest.mark.slow
def test_wheel_base_install_without_extras(tmp_path: Path) -> None:
    r = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", ROOT)
    assert r.returncode == 0, r.stderr
    wheel = next((tmp_path / "dist").glob("userlayer-*.whl"))
    env = tmp_path / "env"
    venv.create(env, with_pip=True)
    py = env / "bin" / "python"
    r = _run(py, "-m", "pip", "install", "-q", wheel)  # base install: no extras
    assert r.returncode == 0, r.stderr
    code = (
        "import sys, userlayer.sdk, userlayer.tools.exceptions\n"
        "assert 'torch' not in sys.modules\n"
        "import importlib.util as u\n"
        "assert u.find_spec('torch') is None, 'base install pulled torch'\n"
        "assert u.find_spec('sdk') is None and u.find_spec('tools') is None\n"
        "print(userlayer.sdk.__file__)"
    )
    r = _run(py, "-c", code, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "site-packages/userlayer/sdk/__init__.py" in r.stdout
