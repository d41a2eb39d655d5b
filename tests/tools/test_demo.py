"""``userlayer demo --quick``: the whole product end to end, in CI.

Runs every stage for real (synthetic data, pretraining, ONNX export, a Flower
simulation with DP, the API as a subprocess on 127.0.0.1, SDK requests) and
checks the report, the figure, and that the API process is gone afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from userlayer.tools.cli import app


def _live_serve_processes(out: Path) -> list[str]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if " serve " in cmd and str(out) in cmd:
                found.append(cmd)
    return found


def test_quick_demo(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    r = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert r.exit_code == 0, r.output
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
    assert "quality: held-out next item" in r.output and "serving:" in r.output
    cr = rep["critique"]  # one critique through the SDK: every item cheaper than its reference
    assert cr["critique"] == "подешевле" and cr["applied"]
    assert all(it["price"] < cr["reacting_to"]["price"] for it in cr["items"])
    assert rep["explanation"]["text"] and "explanation (edge):" in r.output
    assert not _live_serve_processes(out)
