"""``userlayer bench gpu``: the budgeted GPU check, rehearsed on the CPU stand-in here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from userlayer.tools.bench.gpu import GpuCheckConfig, gpu_check


def test_without_a_gpu_every_part_is_skipped_with_the_reason(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    out = tmp_path / "gpu.json"
    gpu_check(tiny_model_dir, GpuCheckConfig(), out)
    res = json.loads(out.read_text())
    assert res["environment"]["torch"] == torch.__version__
    if not torch.cuda.is_available():
        for part in ("parity", "serving", "api"):
            assert "no GPU engine" in res[part]["skipped"]


def test_the_stand_in_runs_parity_and_serving_and_writes_after_each_part(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    out = tmp_path / "gpu.json"
    cfg = GpuCheckConfig(
        parts=("parity", "serving"), batches=(1, 4), repeats=1, users=20, stand_in=True
    )
    rep = gpu_check(model, cfg, out)
    res = json.loads(out.read_text())
    engine = "torch-cuda" if torch.cuda.is_available() else "torch-cpu-stand-in"
    parity = res["parity"][engine]
    assert parity["rows"] == 64 and parity["same_top10"] == 64  # CPU against CPU: identical
    beam = res["parity"][f"{engine}, beam"]  # log-probabilities, not reciprocal ranks
    assert beam["ranking"] == "beam" and beam["same_top10"] == 64 and beam["max_score_gap"] == 0
    assert res["serving"][engine]["torch/4"]["rows_per_s_adapters"] > 0
    assert res["total_s"] >= res["parity_s"] + res["serving_s"] - 0.2
    assert "not GPU figures" in " ".join(rep.notes) or torch.cuda.is_available()


def test_parts_past_the_budget_are_skipped(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "gpu.json"
    gpu_check(tiny_model_dir, GpuCheckConfig(parts=("parity",), budget_s=10, stand_in=True), out)
    assert "budget" in json.loads(out.read_text())["parity"]["skipped"]


def test_a_failing_part_records_its_error_and_the_next_parts_still_run(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    (model / "model.safetensors").write_bytes(b"not a safetensors file")
    out = tmp_path / "gpu.json"
    cfg = GpuCheckConfig(
        parts=("parity", "serving"), batches=(1,), repeats=1, users=20, stand_in=True
    )
    gpu_check(model, cfg, out)
    res = json.loads(out.read_text())
    for part in ("parity", "serving"):  # the first failure did not end the run
        assert res[part]["error"] and "Traceback" in res[part]["traceback"]
    assert res["total_s"] >= 0
