"""The user's favourite items, released through a Gaussian count histogram.

An item's count is the number of days (UTC) on which the user has at least
one event of it (:func:`occasions`), so a view, a cart and a purchase of the
same item in one shopping trip count once. Adding or removing one event
changes at most one item's count, by at most 1: with N(0, sigma^2) noise on
*every* catalog item's count (dense, so items the user never touched can come
out too) the release is a Gaussian mechanism of sensitivity 1 per event,
accounted like any other (``Mechanism(sigma, 1.0, 1)``, or as a block of a
joint release whose other block moves by at most ``sqrt(1 - share)``, see
:mod:`userlayer.edge.encoder`). Everything after the noisy counts is
post-processing: the items whose noisy count passes the threshold
``min_count - 1 + sigma * Phi^-1(1 - alpha / catalog)`` (so an item with
fewer than ``min_count`` occasions, one the user never touched included, is
released with probability at most ``alpha / catalog``: at most about
``alpha`` such items per release), the ``k`` largest, least frequent first.
On repeat-heavy data (groceries) the user's staples are exactly what a short
session does not show.

The unit stays the event: an item bought on one day only is protected at
epsilon per event for each of its events, so a day with ``m`` events of the
same item still moves its count by 1 at most, whatever ``m``.

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

__all__ = [
    "FavouritesConfig",
    "favourite_threshold",
    "occasions",
    "select_favourites",
    "top_favourites",
]


@dataclass(frozen=True)
class FavouritesConfig:
    """How many favourites at most, and how sure the release must be; validated on creation."""

    k: int = 10
    alpha: float = 0.1  # expected items released that the user never touched
    min_count: float = 2.0  # a favourite: events of it on at least two days
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
    if sigma == 0:
        return cfg.min_count
    # an item with fewer than min_count occasions (never touched included) passes with
    # probability at most alpha / catalog
    return cfg.min_count - 1 - sigma * NormalDist().inv_cdf(cfg.alpha / catalog)


def occasions(items: Sequence[str], days: Sequence[int]) -> list[str]:
    """One item id per (item, day) with an event: the counts :func:`select_favourites` takes.

    ``days`` are the events' day numbers (e.g. UTC days since the epoch),
    aligned with ``items``.
    """
    if len(items) != len(days):
        raise PrivacyError(f"{len(items)} items but {len(days)} days")
    return [item for item, _ in dict.fromkeys(zip(items, days, strict=True))]


def select_favourites(
    events: Iterable[str],
    catalog: Sequence[str],
    sigma: float,
    cfg: FavouritesConfig,
    rng: DPRandom,
) -> list[str]:
    """The released favourites of one user (item ids), least frequent first.

    ``events`` holds one item id per occasion (:func:`occasions`); ``catalog``
    is the public, sorted item list (the Semantic ID table's keys):
    the noise covers every item of it, whatever the user did; events of items
    outside it are left out. ``sigma`` is the noise's standard deviation in
    counts (0: exact, not private).
    """
    position = {item: i for i, item in enumerate(catalog)}
    counts = np.zeros(len(catalog), dtype=np.float64)
    for item, c in Counter(e for e in events if e in position).items():
        counts[position[item]] = c
    if sigma > 0:
        counts = counts + rng.gaussian((len(catalog),), sigma)
    return [catalog[i] for i in top_favourites(counts, sigma, cfg)]


def top_favourites(noisy: np.ndarray, sigma: float, cfg: FavouritesConfig) -> np.ndarray:
    """Post-processing of noisy counts (one per catalog item, noise std ``sigma``).

    Returns the catalog indices that pass :func:`favourite_threshold`, the
    ``k`` largest (ties by catalog order), least frequent first.
    """
    passed = np.flatnonzero(noisy >= favourite_threshold(sigma, len(noisy), cfg))
    if cfg.k == 0 or passed.size == 0:
        return passed[:0]
    top: np.ndarray = passed[np.lexsort((passed, -noisy[passed]))][: cfg.k]
    return top[::-1]
