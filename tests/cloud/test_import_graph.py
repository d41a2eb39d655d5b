"""The cloud depends on no edge or tools module; shared contracts live in ``userlayer.sdk``.

Issue 20: ``[cloud]`` must install and import no edge code. Checked twice: every
import statement under ``cloud/`` (static, including imports inside functions),
and the modules loaded when the API, the serving engine and the Flower server
app are imported (runtime).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("userlayer.edge", "userlayer.tools")


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def test_no_cloud_module_imports_edge_or_tools() -> None:
    bad = [
        f"{p.relative_to(ROOT)}: {name}"
        for p in sorted((ROOT / "cloud").rglob("*.py"))
        for name in _imports(p)
        if name.startswith(FORBIDDEN)
    ]
    assert not bad, bad
    sdk_bad = [
        f"{p.relative_to(ROOT)}: {name}"
        for p in sorted((ROOT / "sdk").rglob("*.py"))
        for name in _imports(p)
        if name.startswith((*FORBIDDEN, "userlayer.cloud"))
    ]
    assert not sdk_bad, sdk_bad


def test_the_cloud_entry_points_load_no_edge_module(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import userlayer.cloud.api.app, userlayer.cloud.service, userlayer.cloud.fl.server\n"
        "import userlayer.cloud.engine.engine, userlayer.cloud.registry\n"
        f"bad = sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r}))\n"
        "assert not bad, bad\n"
        "print('ok')"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("ok")


def test_an_api_worker_loads_no_model_code() -> None:
    """A worker of the engine core parses and authenticates: no torch, no ONNX Runtime."""
    code = (
        "import sys, userlayer.cloud.api.app, userlayer.cloud.core.client; "
        "print(sorted(m for m in ('torch', 'onnxruntime', 'userlayer.cloud.engine.engine') "
        "if m in sys.modules))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert r.stdout.strip() == "[]", r.stdout
