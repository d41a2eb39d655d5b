"""``userlayer fl simulate`` on Flower's simulation engine with a handful of users.

A real Flower run (Ray, one virtual node per user): rounds complete with
drop-outs, personal packages land in the registry verified, a second run on
the same directory resumes after the last checkpointed round, and the
registry's adapters are evaluated against the base.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from userlayer.tools.data.synth import SynthResult
from userlayer.tools.fl import SimulationConfig, evaluate_registry, plot_rounds, simulate
from userlayer.tools.sids import SidConfig, build_semantic_ids
from userlayer.tools.train.pretrain import PretrainConfig, pretrain

TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "d_ff": 48, "max_items": 8}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, small_synth: SynthResult) -> Path:
    d = tmp_path_factory.mktemp("fldata")
    small_synth.save(d)
    table, _ = build_semantic_ids(
        small_synth.dataset, SidConfig(codebook_size=16, embedding="collaborative")
    )
    table.save(d / "sids.json")
    pretrain(d, d / "m", PretrainConfig(epochs=1, batch_size=32, model=TINY))
    return d


def test_simulation_with_dropouts_then_resume(tmp_path: Path, data_dir: Path) -> None:
    wd = tmp_path / "fl"
    seen: list[dict[str, object]] = []
    base = {
        "users_per_round": 3,
        "population": 5,
        "min_replies": 1,
        "epochs": 2.0,
        "dropout": 0.3,
        "epsilon_per_round": 1.0,
    }
    res = simulate(data_dir, data_dir / "m", wd, SimulationConfig(rounds=1, **base), seen.append)
    assert [r["round"] for r in res["rounds"]] == [1] and len(seen) == 1
    r1 = res["rounds"][0]
    assert r1["sampled"] == 3 and r1["valid"] + r1["dropped"] + r1["rejected"] == 3
    # the server "restarts": a second run on the same directory goes on from round 1
    res = simulate(data_dir, data_dir / "m", wd, SimulationConfig(rounds=2, **base), seen.append)
    assert [r["round"] for r in res["rounds"]] == [1, 2]
    state = json.loads((wd / "server" / "state.json").read_text())
    assert state["round"] == 2
    valid = sum(r["valid"] for r in res["rounds"])
    packages = list((wd / "registry" / "adapters").rglob("*.ulap"))
    assert valid > 0 and len(packages) >= valid  # one package per service of each valid user
    for r in res["rounds"]:
        if r["valid"]:
            assert 0 < r["epsilon_user_max"] <= 2.0 + 1e-6  # per-user DP-SGD, 1.0 per round
        if r["aggregated"]:
            assert r["epsilon"] > 0  # user-level epsilon of the shared part
    png = plot_rounds(res["rounds"], tmp_path / "rounds.png")
    assert png.stat().st_size > 1000
    q = evaluate_registry(data_dir, wd, beam=10)
    assert q["users"] >= 1
    for name in ("base only", "with adapter"):
        assert 0 <= q[name]["N@10"] <= q[name]["R@10"] <= 1
