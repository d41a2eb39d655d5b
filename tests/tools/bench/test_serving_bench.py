"""``userlayer bench serving`` in smoke size: both backends, with and without adapters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from userlayer.tools.cli import app


def test_bench_serving_smoke(tmp_path: Path, tiny_model_dir: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    md, js = tmp_path / "bench.md", tmp_path / "serving.json"
    args = ["bench", "serving", "--model", str(model), "--batches", "1,4", "--users", "50"]
    args += ["--repeats", "1", "--json", str(js), "--markdown", str(md)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    res = json.loads(js.read_text())["results"]
    for key in ("onnxruntime/1", "onnxruntime/4", "torch/1", "torch/4"):
        assert res[key]["rows_per_s_adapters"] > 0 and res[key]["rows_per_s_base"] > 0
    assert res["naive_peft/4"]["rows_per_s_adapters"] > 0
    assert res["naive_peft/4"]["engine_vs_naive"] > 0
    assert (model / "onnx" / "prefill.onnx").exists()
    assert "| onnxruntime | 4 |" in md.read_text()
    for key in ("onnxruntime/4/critiques", "torch/4/critiques"):  # the model has catalog.json
        assert res[key]["rows_per_s_adapters_critiques"] > 0
    assert "every row with a critique" in md.read_text()
    # its progress, also in a log: 2 backends x 2 batches + the peft swap, the total exact
    assert "serving benchmark: peft swap per request: 5/5" in r.output


def test_bench_serving_times_the_dense_heads_rankings_beside_the_beam(
    tmp_path: Path, tiny_head_model_dir: Path, tiny_model_dir: Path
) -> None:
    js = tmp_path / "serving.json"
    args = ["bench", "serving", "--model", str(tiny_head_model_dir), "--batches", "2"]
    args += ["--backends", "onnxruntime", "--users", "10", "--repeats", "1", "--no-naive"]
    args += ["--markdown", str(tmp_path / "b.md"), "--json", str(js)]
    r = CliRunner().invoke(app, [*args, "--rankings", "beam,dense,beam+dense,fused"])
    assert r.exit_code == 0, r.output
    res = json.loads(js.read_text())["results"]
    for ranking in ("beam", "dense", "beam+dense", "fused"):
        assert res[f"onnxruntime, {ranking}/2"]["rows_per_s_adapters"] > 0
        assert res[f"onnxruntime, {ranking}/2"]["ranking"] == ranking
    assert "--rankings beam,dense,beam+dense,fused" in json.loads(js.read_text())["command"]
    bad = CliRunner().invoke(app, [*args, "--rankings", "greedy"])
    assert bad.exit_code == 2 and "greedy" in bad.output
    no_head = [*args[:2], "--model", str(tiny_model_dir), *args[4:], "--rankings", "dense"]
    refused = CliRunner().invoke(app, no_head)
    assert refused.exit_code != 0 and "no dense item head" in str(
        refused.exception or refused.output
    )
