"""``evaluate_adapters`` end to end on a tiny model: every variant measured, budgets kept."""

from __future__ import annotations

from pathlib import Path

from userlayer.edge.training import TrainConfig
from userlayer.tools.eval.adapters import AdapterEvalConfig, evaluate_adapters


def test_evaluate_adapters(tmp_path: Path, synth_data_dir: Path, tiny_model_dir: Path) -> None:
    cfg = AdapterEvalConfig(users=6, epsilon=4.0, train=TrainConfig(epochs=2, max_steps=10))
    res = evaluate_adapters(synth_data_dir, tiny_model_dir, cfg, tmp_path)
    assert res["users"] == 6
    assert set(res["metrics"]) == {"base only", "adapter (no DP)", "adapter (DP, eps 4)"}
    for m in res["metrics"].values():
        assert m["n"] == 6 and 0 <= m["N@10"] <= m["R@10"] <= 1
    assert set(res["specificity"]) == {"adapter (no DP)", "adapter (DP, eps 4)"}
    assert all(0 <= v <= 1 for v in res["specificity"].values())
    assert res["epsilon"]["max"] <= 4.0 + 1e-6 and res["epsilon"]["median"] > 3.5
