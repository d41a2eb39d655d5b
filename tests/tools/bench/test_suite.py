"""``userlayer bench all --quick``: every benchmark end to end on a tiny world (the CI smoke)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from userlayer.tools.bench.suite import BENCHMARKS, bench_all
from userlayer.tools.cli import app
from userlayer.tools.exceptions import ToolsError


@pytest.mark.slow
def test_bench_all_quick_writes_every_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    docs = Path("docs") / "benchmarks.md"
    before = docs.read_text() if docs.exists() else None
    r = CliRunner().invoke(app, ["bench", "all", "--quick", "--json", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert sorted(res) == sorted(BENCHMARKS)
    serving = res["serving"]["results"]
    assert serving["naive_peft/4"]["rows_per_s_adapters"] > 0
    adapters = res["adapters"]["results"]
    assert 0 < adapters["cold_to_slot"]["p50_ms"] <= adapters["cold_to_slot"]["p99_ms"]
    assert adapters["upload_to_served"]["n"] > 0
    api = res["api"]["results"]
    for setup in ("inline", "process:2"):  # the engine in the HTTP process, and apart
        level = api[f"{setup}/c4"]
        assert level["ok"] == level["sent"]  # below capacity nothing is refused
        assert 0 < level["personalized_share"] < 1  # users with and without adapters
    assert api["engine_rows_per_s_batch64"] > 0
    assert api["overload"]["status"].get("503", 0) > 0  # past capacity: 503s ...
    assert api["overload"]["missing_retry_after"] == 0  # ... each with Retry-After
    assert set(api["overload"]["status"]) <= {"200", "503"}
    fl = res["fl"]["results"]
    assert fl["rounds"][0]["valid_replies"] == 2
    assert fl["local"]["dp_median_s"] > 0 and fl["local"]["plain_median_s"] > 0
    assert (docs.read_text() if docs.exists() else None) == before  # smoke runs stay out


def test_full_run_needs_a_model_and_data() -> None:
    with pytest.raises(ToolsError, match="--model and --data"):
        bench_all(None, None, quick=False)
    with pytest.raises(ToolsError, match="unknown benchmarks"):
        bench_all(None, None, quick=True, only=("nope",))
