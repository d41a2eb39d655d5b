"""``userlayer demo --quick``: the whole product end to end, in CI.

Runs the console script as a user does (a subprocess, so the Ray workers' and
the API process's output is caught too): every stage for real (synthetic
data, pretraining, ONNX export, a Flower simulation with DP, the API on
127.0.0.1, SDK requests). Checks the report, the figure, that the API process
is gone afterwards, and that the output is the CLI's own: no library DEBUG
line, deprecation or warning at default verbosity.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil

# what a library prints when it is not silenced (Flower's levels, Python's warnings)
NOISE = re.compile(
    r"\bDEBUG\b|DEPRECATED|DeprecationWarning|FutureWarning|UserWarning|RuntimeWarning"
    r"|optimal order|\bWARNING\b|Traceback"
)
MAX_LINES = 80  # progress (a plain line per stage and every 15 s in a log) and the report


def _live_serve_processes(out: Path) -> list[str]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if " serve " in cmd and str(out) in cmd:
            found.append(cmd)
    return found


def noise(output: str) -> list[str]:
    """Lines of ``output`` a library printed."""
    return [line for line in output.splitlines() if NOISE.search(line)]


def test_noise_finds_what_libraries_print() -> None:
    lines = [
        "INFO :      DEPRECATED FEATURE: run_simulation() is deprecated",
        "DEBUG :   Pre-registering run with id 42",
        "/x/ray/_private/worker.py:1: FutureWarning: Tip: ...",
        "  optimal order is the largest alpha. Please consider expanding the range",
        "stage 3/7: pretraining the base",
    ]
    assert noise("\n".join(lines)) == lines[:4]


def test_quick_demo(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "FLWR_LOG_LEVEL")}
    r = subprocess.run(
        [Path(sys.executable).parent / "userlayer", "demo", "--quick", "--out", out],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env | {"COLUMNS": "120"},
        check=False,
    )
    output = r.stdout + r.stderr
    assert r.returncode == 0, output[-5000:]
    assert not noise(output), "library output at default verbosity:\n" + "\n".join(noise(output))
    assert len(output.splitlines()) <= MAX_LINES, output
    rep = json.loads((out / "report.json").read_text())
    q = rep["quality"]
    assert q["users with an adapter"] > 0
    for name in (
        "private, base only",
        "private, with adapters",
        "full history, same users (reference, not private)",
    ):
        assert 0 <= q[name]["N@10"] <= q[name]["R@10"] <= 1
    p = rep["privacy"]
    assert 0 < p["epsilon_user_median"] <= p["epsilon_user_max"] <= 8.0 and p["delta"] == 1e-5
    s = rep["serving"]
    assert s["requests"] == 200 and s["requests_per_s"] > 0 and 0 < s["p50_ms"] <= s["p99_ms"]
    assert 0 < s["personalized_share"] < 1  # users with and without adapters were asked
    assert "registry_import" not in rep  # the rounds write straight into the served registry
    assert (out / "demo.png").stat().st_size > 5000
    assert "quality: held-out next item" in output and "serving:" in output
    cr = rep["critique"]  # one critique through the SDK: every item cheaper than its reference
    assert cr["critique"] == "подешевле" and cr["applied"]
    assert all(it["price"] < cr["reacting_to"]["price"] for it in cr["items"])
    assert rep["explanation"]["text"] and "explanation (edge):" in output
    assert not _live_serve_processes(out)


def test_the_figure_opens_with_quality_on_the_same_users(tmp_path: Path) -> None:
    from matplotlib import image

    from userlayer.tools.demo import QUALITY_ROWS, _figure

    m = {"R@10": 0.2, "N@10": 0.1}
    quality: dict[str, object] = {key: m for key, _ in QUALITY_ROWS}
    quality["users with an adapter"] = 83
    rounds = [{"round": i, "sampled": 5, "valid": 4, "epsilon": 0.5 * i} for i in (1, 2, 3)]
    png = _figure(
        quality, rounds, {"latencies_ms": [5.0, 7.0, 9.0], "concurrency": 8}, tmp_path / "f.png"
    )
    h, w, _ = image.imread(png).shape
    assert w > 3 * h  # four panels side by side
