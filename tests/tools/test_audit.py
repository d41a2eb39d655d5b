"""The membership-inference audit: its statistics, and a real audit of trained adapters."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from userlayer.tools.audit import (
    AuditConfig,
    auc,
    audit_membership,
    epsilon_lower_bound,
    max_auc,
)
from userlayer.tools.exceptions import ToolsError


def test_auc_on_hand_made_scores() -> None:
    assert auc([3, 4], [1, 2]) == 1.0
    assert auc([1, 2], [3, 4]) == 0.0
    assert auc([1, 3], [2, 2]) == 0.5
    assert auc([2], [2]) == 0.5  # ties count half
    with pytest.raises(ToolsError, match="members"):
        auc([], [1.0])


def test_max_auc_of_dp() -> None:
    assert max_auc(1e-9, 0.0) == pytest.approx(0.5, abs=1e-3)
    assert max_auc(1.0, 0.0) == pytest.approx(math.e / (1 + math.e), abs=1e-4)  # 0.731
    assert max_auc(1.0, 0.0) < max_auc(2.0, 0.0) < max_auc(8.0, 0.0) < 1.0


def _laplace(eps_true: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores of a Laplace mechanism on a count that membership moves by one."""
    rng = np.random.default_rng(seed)
    return 1 + rng.laplace(0, 1 / eps_true, n), rng.laplace(0, 1 / eps_true, n)


def test_the_bound_holds_for_a_true_mechanism_and_catches_a_false_claim() -> None:
    members, others = _laplace(1.0, 4000, 0)  # truly 1-DP
    lb = epsilon_lower_bound(members, others, 1e-5)
    assert 0.3 < lb <= 1.0
    members, others = _laplace(4.0, 4000, 1)  # claims 1, is 4-DP: the audit must say so
    assert epsilon_lower_bound(members, others, 1e-5) > 1.0
    same = np.random.default_rng(2).normal(size=(2, 400))  # no signal: no evidence
    assert epsilon_lower_bound(same[0], same[1], 1e-5) < 0.5


def test_bad_audit_settings_are_refused() -> None:
    with pytest.raises(ToolsError, match="users"):
        AuditConfig(users=2)
    with pytest.raises(ToolsError, match="positive"):
        AuditConfig(epsilons=(None, 0.0))
    with pytest.raises(ToolsError, match="positions"):
        AuditConfig(positions=("first",))


@pytest.mark.slow
def test_audit_without_dp_leaks_and_with_dp_stays_within_epsilon(
    synth_data_dir: Path, tiny_model_dir: Path
) -> None:
    # the tiny base needs more steps, and the LoRA deltas too, to memorize a canary at all;
    # the recorded run (docs/edge.md) audits the default settings on the default base
    cfg = AuditConfig(
        users=24,
        epsilons=(None, 1.0),
        epochs=40.0,
        lr=2e-2,
        history=20,
        trainable=None,
        references=16,
        replay_users=6,
    )
    res = audit_membership(synth_data_dir, tiny_model_dir, cfg)
    print(f"\naudit (tiny model, {res['users']} users): {res['settings']}")
    by = {(r["epsilon"], r["position"]): r for r in res["settings"]}
    assert set(by) == {(None, "last"), (None, "middle"), (1.0, "last"), (1.0, "middle")}
    for pos in ("last", "middle"):
        plain, dp = by[(None, pos)], by[(1.0, pos)]
        assert plain["reported_epsilon_max"] is None
        assert plain["auc"] >= 0.7  # without DP the attack visibly succeeds
        assert plain["replay_exact"] == 6 and plain["replay_auc"] == 1.0  # nothing random
        assert dp["reported_epsilon_max"] == pytest.approx(1.0, rel=0.05)
        assert dp["empirical_epsilon_lb"] <= dp["reported_epsilon_max"]
        assert dp["auc"] < plain["auc"]
        assert dp["replay_exact"] == 0  # the OS noise cannot be replayed


@pytest.mark.slow
def test_the_replay_attack_succeeds_when_the_noise_is_seeded(
    synth_data_dir: Path, tiny_model_dir: Path
) -> None:
    # what the old code did: DP randomness from a seed that anyone reading the config knows
    cfg = AuditConfig(
        users=6, epsilons=(1.0,), positions=("middle",), replay_users=6, train_seed=0, epochs=4
    )
    res = audit_membership(synth_data_dir, tiny_model_dir, cfg)
    (r,) = res["settings"]
    assert "not private" in res["rng"]
    assert r["replay_exact"] == 6 and r["replay_auc"] == 1.0  # every canary found for sure
