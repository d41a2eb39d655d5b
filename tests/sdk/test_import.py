"""The SDK must stay importable without torch, numpy or any extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_sdk_import_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys, userlayer.sdk as s, userlayer.sdk.client as c, userlayer.sdk.api as a\n"
        "s.Event; s.SemanticIdTable; c.Client; c.AsyncClient; a.RecommendRequest\n"
        "heavy = [m for m in ('torch', 'numpy', 'pyarrow', 'flwr') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print('ok')"
    )
    r = _run(code, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_no_generic_top_level_names(tmp_path: Path) -> None:
    # the folders are installed as userlayer.*; `import sdk` must not work from elsewhere
    for name in ("sdk", "edge", "cloud", "tools"):
        r = _run(f"import {name}", tmp_path)
        assert r.returncode != 0, f"top-level module {name!r} is importable"
