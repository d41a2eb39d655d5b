"""``userlayer fl simulate`` on Flower's simulation engine with a handful of users.

A real Flower run (Ray, one virtual node per user): rounds complete with
drop-outs, personal packages land in the registry verified, a second run on
the same directory resumes after the last checkpointed round, and the
registry's adapters are evaluated against the base.
"""

from __future__ import annotations

import json
from pathlib import Path

from userlayer.cloud.fl.server import open_registry
from userlayer.tools.fl import SimulationConfig, evaluate_registry, plot_rounds, simulate


def test_simulation_with_dropouts_then_resume(
    tmp_path: Path, synth_data_dir: Path, tiny_model_dir: Path
) -> None:
    data_dir = synth_data_dir
    wd = tmp_path / "fl"
    seen: list[dict[str, object]] = []
    base = {  # every user each round (rate 1): sampling itself is tested in tests/cloud/fl
        "users_per_round": 5,
        "population": 5,
        "min_replies": 1,
        "epochs": 2.0,
        "dropout": 0.3,
        "epsilon_per_round": 1.0,
    }
    res = simulate(data_dir, tiny_model_dir, wd, SimulationConfig(rounds=1, **base), seen.append)
    assert [r["round"] for r in res["rounds"]] == [1] and len(seen) == 1
    r1 = res["rounds"][0]
    assert r1["sampled"] == 5 and r1["valid"] + r1["dropped"] + r1["rejected"] == 5
    # the server "restarts": a second run on the same directory goes on from round 1
    res = simulate(data_dir, tiny_model_dir, wd, SimulationConfig(rounds=2, **base), seen.append)
    assert [r["round"] for r in res["rounds"]] == [1, 2]
    state = json.loads((wd / "server" / "state.json").read_text())
    assert state["round"] == 2
    valid = sum(r["valid"] for r in res["rounds"])
    reg = open_registry(wd)  # the rounds wrote straight into the serving registry
    versions = [
        v
        for s in ("samokat", "megamarket", "kuper")
        for u in reg.users(s)
        for v in reg.versions(s, u)
    ]
    reg.close()
    assert valid > 0 and len(versions) >= valid  # one package per service of each valid user
    assert not (wd / "trust").exists() and not (wd / "keys").exists()
    for r in res["rounds"]:
        if r["valid"]:
            assert 0 < r["epsilon_user_max"] <= 2.0 + 1e-6  # per-user DP-SGD, 1.0 per round
        if r["aggregated"]:
            assert r["epsilon"] > 0  # user-level epsilon of the shared part
    png = plot_rounds(res["rounds"], tmp_path / "rounds.png")
    assert png.stat().st_size > 1000
    q = evaluate_registry(data_dir, wd, beam=10)
    assert q["users"] >= 1
    for name in ("base only", "with adapter", "full history"):  # the same users in each
        assert 0 <= q[name]["N@10"] <= q[name]["R@10"] <= 1 and q[name]["n"] == q["users"]
