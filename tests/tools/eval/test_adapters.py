"""``evaluate_adapters`` end to end on a tiny model: every variant measured, budgets kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from userlayer.edge.training import TrainConfig
from userlayer.tools.data.synth import SynthResult
from userlayer.tools.eval.adapters import AdapterEvalConfig, evaluate_adapters
from userlayer.tools.sids import SidConfig, build_semantic_ids
from userlayer.tools.train.pretrain import PretrainConfig, pretrain

TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "d_ff": 48, "max_items": 8}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, small_synth: SynthResult) -> Path:
    d = tmp_path_factory.mktemp("data")
    small_synth.save(d)
    table, _ = build_semantic_ids(
        small_synth.dataset, SidConfig(codebook_size=16, embedding="collaborative")
    )
    table.save(d / "sids.json")
    pretrain(d, d / "m", PretrainConfig(epochs=1, batch_size=32, model=TINY))
    return d


def test_evaluate_adapters(tmp_path: Path, model_dir: Path) -> None:
    cfg = AdapterEvalConfig(users=6, epsilon=4.0, train=TrainConfig(epochs=2, max_steps=10))
    res = evaluate_adapters(model_dir, model_dir / "m", cfg, tmp_path)
    assert res["users"] == 6
    assert set(res["metrics"]) == {"base only", "adapter (no DP)", "adapter (DP, eps 4)"}
    for m in res["metrics"].values():
        assert m["n"] == 6 and 0 <= m["N@10"] <= m["R@10"] <= 1
    assert set(res["specificity"]) == {"adapter (no DP)", "adapter (DP, eps 4)"}
    assert all(0 <= v <= 1 for v in res["specificity"].values())
    assert res["epsilon"]["max"] <= 4.0 + 1e-6 and res["epsilon"]["median"] > 3.5
