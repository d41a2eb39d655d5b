from __future__ import annotations

import math

import pytest

from userlayer.tools.eval.metrics import Accumulator, ndcg_at, recall_at


@pytest.mark.parametrize(
    ("ranked", "target", "r5", "n5", "r10", "n10"),
    [
        (["a", "b", "c"], "a", 1, 1, 1, 1),
        (["x", "a"], "a", 1, 1 / math.log2(3), 1, 1 / math.log2(3)),
        ([str(i) for i in range(10)], "7", 0, 0, 1, 1 / math.log2(9)),
        (["x", "y"], "a", 0, 0, 0, 0),
        ([], "a", 0, 0, 0, 0),
    ],
)
def test_hand_made_rankings(
    ranked: list[str], target: str, r5: float, n5: float, r10: float, n10: float
) -> None:
    assert recall_at(ranked, target, 5) == r5
    assert ndcg_at(ranked, target, 5) == pytest.approx(n5)
    assert recall_at(ranked, target, 10) == r10
    assert ndcg_at(ranked, target, 10) == pytest.approx(n10)


def test_accumulator_groups() -> None:
    acc = Accumulator()
    acc.add(["a"], "a", "kuper")
    acc.add(["b", "a"], "a", "samokat")
    acc.add(["b"], "a", "samokat")
    res = acc.result()
    assert res["all"]["R@10"] == pytest.approx(2 / 3)
    assert res["kuper"] == {"R@5": 1.0, "N@5": 1.0, "R@10": 1.0, "N@10": 1.0, "n": 1}
    assert res["samokat"]["N@5"] == pytest.approx(0.5 / math.log2(3))


def test_full_history_check_names_every_group_where_private_wins() -> None:
    from userlayer.tools.eval.evaluate import full_history_check

    m = {"R@10": 0.3, "N@10": 0.2}
    results = {
        "generative": {
            "full": {"all": m, "kuper": {"R@10": 0.1, "N@10": 0.2}},
            "private": {"all": m, "kuper": {"R@10": 0.2, "N@10": 0.1}},
        },
        "popularity": {"full": {"all": m}, "private": {"all": m}},
        "one regime only": {"full": {"all": m}},
    }
    out = full_history_check(results)
    assert not out["ok"]
    assert out["violations"] == [
        {"model": "generative", "group": "kuper", "metric": "R@10", "full": 0.1, "private": 0.2}
    ]
    results["generative"]["full"]["kuper"]["R@10"] = 0.2  # a tie is not lower
    assert full_history_check(results) == {"ok": True, "violations": []}
