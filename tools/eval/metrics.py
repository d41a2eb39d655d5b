"""Ranking metrics for one held-out target per user (Recall = hit rate)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["Accumulator", "ndcg_at", "recall_at"]


def recall_at(ranked: Sequence[str], target: str, k: int) -> float:
    """1 if the target is in the top ``k``, else 0."""
    return 1.0 if target in ranked[:k] else 0.0


def ndcg_at(ranked: Sequence[str], target: str, k: int) -> float:
    """1 / log2(rank + 2) for the target's 0-based rank within the top ``k``, else 0."""
    for rank, item in enumerate(ranked[:k]):
        if item == target:
            return 1.0 / math.log2(rank + 2)
    return 0.0


class Accumulator:
    """Averages Recall@k and NDCG@k, overall and per group (e.g. service)."""

    def __init__(self, ks: Sequence[int] = (5, 10)) -> None:
        self.ks = tuple(ks)
        self.sums: dict[str, dict[str, float]] = {}
        self.counts: dict[str, int] = {}

    def add(self, ranked: Sequence[str], target: str, group: str | None = None) -> None:
        """Score one ranking."""
        for g in ("all", group) if group else ("all",):
            s = self.sums.setdefault(g, {})
            for k in self.ks:
                s[f"R@{k}"] = s.get(f"R@{k}", 0.0) + recall_at(ranked, target, k)
                s[f"N@{k}"] = s.get(f"N@{k}", 0.0) + ndcg_at(ranked, target, k)
            self.counts[g] = self.counts.get(g, 0) + 1

    def result(self) -> dict[str, dict[str, float]]:
        """Means per group; each group also reports its count ``n``."""
        return {
            g: {**{m: v / self.counts[g] for m, v in s.items()}, "n": self.counts[g]}
            for g, s in self.sums.items()
        }
