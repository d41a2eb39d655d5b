"""The user's favourite items, released through a Gaussian count histogram.

Each event adds 1 to its item's count, so adding or removing one event moves
the count vector by 1 in L2: with N(0, sigma^2) noise on *every* catalog
item's count (dense, so items the user never touched can come out too) the
release is a Gaussian mechanism of sensitivity 1 per event, accounted like
any other (``Mechanism(sigma, 1.0, 1)``, or as part of a joint release whose
per-event vector has norm <= 1). Everything after the noisy counts is
post-processing: the items whose noisy count passes the threshold
``sigma * Phi^-1(1 - alpha / catalog)`` (so an item the user never touched is
released with probability ``alpha / catalog``, about ``alpha`` such items
per release) and at least ``min_count``, the ``k`` largest, least frequent
first. On repeat-heavy data (groceries) the user's staples are exactly what
a short session does not show.

Without noise (``sigma == 0``, not private) the items with count >=
``min_count`` are released: the reference of the measurements.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from userlayer.sdk.exceptions import PrivacyError
from userlayer.sdk.privacy.rng import DPRandom

__all__ = ["FavouritesConfig", "favourite_threshold", "select_favourites"]


@dataclass(frozen=True)
class FavouritesConfig:
    """How many favourites at most, and how sure the release must be; validated on creation."""

    k: int = 10
    alpha: float = 0.1  # expected items released that the user never touched
    min_count: float = 2.0  # a favourite is bought at least twice
    share: float = 0.5  # of a joint release's per-event squared norm (edge.encoder)

    def __post_init__(self) -> None:
        if not 0 <= self.k <= 64:
            raise PrivacyError(f"favourites `k` should be in [0, 64], got {self.k}")
        if not 0 < self.alpha < 1:
            raise PrivacyError(f"favourites `alpha` should be in (0, 1), got {self.alpha}")
        if not (self.min_count >= 1 and math.isfinite(self.min_count)):
            raise PrivacyError(f"favourites `min_count` should be >= 1, got {self.min_count}")
        if not 0 < self.share < 1:
            raise PrivacyError(f"favourites `share` should be in (0, 1), got {self.share}")


def favourite_threshold(sigma: float, catalog: int, cfg: FavouritesConfig) -> float:
    """The noisy count a released item must pass (see the module docstring)."""
    if sigma < 0 or not math.isfinite(sigma) or catalog < 1:
        raise PrivacyError(f"bad favourites threshold inputs: sigma {sigma}, catalog {catalog}")
    tail = 0.0 if sigma == 0 else sigma * NormalDist().inv_cdf(1.0 - cfg.alpha / catalog)
    return max(tail, cfg.min_count)


def select_favourites(
    events: Iterable[str],
    catalog: Sequence[str],
    sigma: float,
    cfg: FavouritesConfig,
    rng: DPRandom,
) -> list[str]:
    """The released favourites of one user's events (item ids), least frequent first.

    ``catalog`` is the public, sorted item list (the Semantic ID table's keys):
    the noise covers every item of it, whatever the user did; events of items
    outside it are left out. ``sigma`` is the noise's standard deviation in
    counts (0: exact, not private).
    """
    position = {item: i for i, item in enumerate(catalog)}
    counts = np.zeros(len(catalog), dtype=np.float64)
    for item, c in Counter(e for e in events if e in position).items():
        counts[position[item]] = c
    threshold = favourite_threshold(sigma, len(catalog), cfg)
    if sigma > 0:
        counts = counts + rng.gaussian((len(catalog),), sigma)
    passed = np.flatnonzero(counts >= threshold)
    if cfg.k == 0 or passed.size == 0:
        return []
    # the k largest, ties by catalog order; returned least frequent first
    top = passed[np.lexsort((passed, -counts[passed]))][: cfg.k]
    return [catalog[i] for i in top[::-1]]
