"""``evaluate_privacy`` end to end on a tiny base with a profile encoder: every row, same users."""

from __future__ import annotations

from pathlib import Path

import pytest

from userlayer.edge.training import TrainConfig
from userlayer.tools.eval.privacy import PrivacyEvalConfig, evaluate_privacy, plot_privacy
from userlayer.tools.exceptions import ToolsError


def test_the_curve_has_every_way_and_epsilon_over_the_same_users(
    tmp_path: Path, synth_data_dir: Path, tiny_model_dir: Path
) -> None:
    cfg = PrivacyEvalConfig(
        epsilons=(1.0, 8.0),
        ways=("profile", "dp-sgd", "both"),
        users=5,
        sasrec=False,
        train=TrainConfig(epochs=2, max_steps=6),
    )
    stages: list[str] = []
    res = evaluate_privacy(synth_data_dir, tiny_model_dir, cfg, lambda s, a, b: stages.append(s))
    assert res["users"] == 5 and stages
    assert set(res["references"]) == {"base, full history", "base, private (session only)"}
    got = {(r["way"], r["epsilon"]) for r in res["rows"]}
    assert got == {(w, e) for w in ("profile", "dp-sgd", "both") for e in (None, 1.0, 8.0)}
    for m in [*res["references"].values(), *res["rows"]]:
        assert 0 <= m["N@10"] <= m["R@10"] <= 1
    for r in res["rows"]:
        assert 0 <= r["specificity"] <= 1 and r["seconds_per_user"] >= 0
    for r in res["rows"]:  # the ledger's composition of every release of the row
        if r["way"] != "profile" and r["epsilon"] is not None:
            assert 0.5 * r["epsilon"] < r["epsilon_spent_max"] <= r["epsilon"] + 1e-6
    noise = {r["epsilon"]: r["noise_multiplier"] for r in res["rows"] if r["way"] == "profile"}
    assert noise[None] == 0 and noise[1.0] > noise[8.0] > 0
    assert res["privacy"]["unit"] == "event" and res["privacy"]["noise"] == "os-csprng"
    png = plot_privacy(res, tmp_path / "p.png")
    assert png.stat().st_size > 1000


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ToolsError, match="ways"):
        PrivacyEvalConfig(ways=("magic",))
    with pytest.raises(ToolsError, match="epsilons"):
        PrivacyEvalConfig(epsilons=(0.0,))
    with pytest.raises(ToolsError, match="both_share"):
        PrivacyEvalConfig(both_share=1.0)
