"""Two-step user sampling (node, then its users) is exactly i.i.d. Bernoulli(q) per user."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from userlayer.sdk.exceptions import PrivacyError
from userlayer.sdk.privacy import SecureRandom, SeededRandom, node_probability
from userlayer.sdk.privacy import sample_given_selected as given


def test_node_probability() -> None:
    assert node_probability(0.1, 1) == pytest.approx(0.1)
    assert node_probability(0.1, 3) == pytest.approx(1 - 0.9**3)
    assert node_probability(1.0, 5) == 1.0
    with pytest.raises(PrivacyError):
        node_probability(0.0, 1)
    with pytest.raises(PrivacyError):
        node_probability(0.5, 0)


def test_one_user_node_always_takes_its_user() -> None:
    assert all(given(1, 0.01, SecureRandom()) == [True] for _ in range(50))


@pytest.mark.parametrize(("m", "q"), [(3, 0.3), (4, 0.05)])
def test_two_steps_give_iid_bernoulli(m: int, q: float) -> None:
    rng = SeededRandom(11)  # a statistical check: reproducible draws are what it needs
    n = 40_000
    counts: dict[tuple[bool, ...], int] = {}
    sel = rng.uniform(n) < node_probability(q, m)
    for s in sel:
        draw = tuple(given(m, q, rng)) if s else (False,) * m
        counts[draw] = counts.get(draw, 0) + 1
    patterns = list(itertools.product([False, True], repeat=m))
    expect = np.array([q ** sum(p) * (1 - q) ** (m - sum(p)) * n for p in patterns])
    seen = np.array([counts.get(p, 0) for p in patterns])
    keep = expect > 5
    chi = stats.chisquare(seen[keep], expect[keep] * seen[keep].sum() / expect[keep].sum())
    assert chi.pvalue > 1e-4
