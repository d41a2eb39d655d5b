"""``evaluate_adapters`` end to end on a tiny model: every variant measured, budgets kept."""

from __future__ import annotations

from pathlib import Path

from userlayer.edge.training import TrainConfig
from userlayer.tools.eval.adapters import AdapterEvalConfig, evaluate_adapters


def test_evaluate_adapters(tmp_path: Path, synth_data_dir: Path, tiny_model_dir: Path) -> None:
    cfg = AdapterEvalConfig(
        users=6,
        epsilon=4.0,
        prompts=("event", "session"),
        train=TrainConfig(epochs=2, max_steps=10),
    )
    res = evaluate_adapters(synth_data_dir, tiny_model_dir, cfg, tmp_path)
    assert res["users"] == 6
    variants = {
        f"adapter ({p} prompts, {d})" for p in ("event", "session") for d in ("no DP", "DP eps 4")
    }
    assert set(res["metrics"]) == {"base only", *variants}
    for m in res["metrics"].values():
        assert m["n"] == 6 and 0 <= m["N@10"] <= m["R@10"] <= 1
    assert set(res["specificity"]) == variants
    assert all(0 <= v <= 1 for v in res["specificity"].values())
    eps = res["epsilon"]["per_variant"]
    assert set(eps) == {v for v in variants if "DP eps" in v} and res["epsilon"]["unit"] == "event"
    assert all(e["max"] <= 4.0 + 1e-6 and e["median"] > 3.5 for e in eps.values())
