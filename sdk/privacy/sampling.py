"""Independent (Poisson) sampling of users when a node hosts several of them.

User-level DP of the shared part needs every user to take part in a round
independently with the same probability ``q`` (the sampling rate the
accountant is given). The server cannot see a node's users, only how many it
hosts (``m``), so sampling is split in two exact steps:

1. the server selects each node with probability ``1 - (1 - q)^m``
   (:func:`node_probability`), the chance that at least one of its users
   would be sampled;
2. a selected node draws its users' inclusion from i.i.d. Bernoulli(q)
   conditioned on at least one (:func:`sample_given_selected`): the first
   included user ``J`` from its truncated geometric law
   ``P(J = j) = q (1 - q)^j / (1 - (1 - q)^m)`` by inversion, the users before
   it out, the users after it i.i.d. Bernoulli(q).

The product is exactly i.i.d. Bernoulli(q) per user: for a non-empty set
``S`` of a node's users, ``P(S) = (1 - (1 - q)^m) * q^|S| (1 - q)^(m - |S|) /
(1 - (1 - q)^m)``. Both draws come from the OS CSPRNG.
"""

from __future__ import annotations

import math

from userlayer.sdk.exceptions import PrivacyError
from userlayer.sdk.privacy.rng import DPRandom

__all__ = ["node_probability", "sample_given_selected"]


def _check(q: float, m: int) -> None:
    if not 0 < q <= 1:
        raise PrivacyError(f"sampling rate should be in (0, 1], got {q}")
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise PrivacyError(f"a node hosts a positive number of users, got {m!r}")


def node_probability(q: float, m: int) -> float:
    """Probability that a node hosting ``m`` users has at least one sampled at rate ``q``."""
    _check(q, m)
    return -math.expm1(m * math.log1p(-q)) if q < 1 else 1.0


def sample_given_selected(m: int, q: float, rng: DPRandom) -> list[bool]:
    """Inclusion of a selected node's ``m`` users: i.i.d. Bernoulli(q) given at least one.

    Raises:
        PrivacyError: on a bad rate or count.
    """
    _check(q, m)
    u = rng.uniform(m)
    if q >= 1:
        return [True] * m
    # inversion of P(J <= j) = (1 - (1 - q)^(j + 1)) / (1 - (1 - q)^m)
    log1mq = math.log1p(-q)
    target = float(u[0]) * node_probability(q, m)  # in [0, P(at least one))
    j = math.ceil(math.log1p(-target) / log1mq) - 1
    j = min(max(j, 0), m - 1)
    return [False] * j + [True] + [bool(x < q) for x in u[j + 1 :]]
