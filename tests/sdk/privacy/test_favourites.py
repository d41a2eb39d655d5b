"""The favourites release: a dense Gaussian count histogram, thresholded, top-k."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from userlayer.sdk.exceptions import PrivacyError
from userlayer.sdk.privacy import SecureRandom, SeededRandom
from userlayer.sdk.privacy.favourites import (
    FavouritesConfig,
    favourite_threshold,
    occasions,
    select_favourites,
)

CATALOG = [f"i{n:04d}" for n in range(2000)]


def test_exact_release_is_the_repeated_items_most_frequent_last() -> None:
    events = ["i0001"] * 5 + ["i0002"] * 2 + ["i0003"] + ["i0004"] * 9 + ["unknown"] * 50
    favs = select_favourites(events, CATALOG, 0.0, FavouritesConfig(k=10), SecureRandom())
    assert favs == ["i0002", "i0001", "i0004"]  # i0003 once: not a favourite; unknown skipped
    top2 = select_favourites(events, CATALOG, 0.0, FavouritesConfig(k=2), SecureRandom())
    assert top2 == ["i0001", "i0004"]
    assert select_favourites(events, CATALOG, 0.0, FavouritesConfig(k=0), SecureRandom()) == []


def test_threshold_bounds_the_items_a_user_never_touched() -> None:
    """Over many releases of an empty history, about ``alpha`` items come out per release."""
    cfg = FavouritesConfig(alpha=0.5, min_count=1.0)
    rng = SeededRandom(3)
    released = sum(len(select_favourites([], CATALOG, 3.0, cfg, rng)) for _ in range(400))
    # Poisson(alpha) per release: 400 releases give 200 on average
    assert stats.poisson(0.5 * 400).cdf(released) > 1e-4
    assert stats.poisson(0.5 * 400).sf(released) > 1e-4
    assert favourite_threshold(3.0, len(CATALOG), cfg) == pytest.approx(
        3.0 * stats.norm.isf(0.5 / len(CATALOG))
    )
    # with min_count 2, items seen on one day only are held back like untouched ones
    once = [f"i{n:04d}" for n in range(1000)]
    released = sum(
        len(select_favourites(once, CATALOG, 1.0, FavouritesConfig(alpha=0.5), rng))
        for _ in range(400)
    )
    assert stats.poisson(0.5 * 400 * 1000 / len(CATALOG)).sf(released) > 1e-4


def test_noise_covers_the_whole_catalog_and_changes_one_count_by_one() -> None:
    """Sensitivity 1: neighbouring histories differ in one item's count by 1, nothing else."""
    seen: list[np.ndarray] = []

    class Recording(SeededRandom):
        def gaussian(self, shape: tuple[int, ...], std: float) -> np.ndarray:
            out = super().gaussian(shape, std)
            seen.append(out)
            return out

    a = ["i0007"] * 12 + ["i0100"] * 4
    b = a[:-1]  # one event removed
    cfg = FavouritesConfig(k=64, min_count=1.0)
    fa = select_favourites(a, CATALOG, 1.0, cfg, Recording(5))
    fb = select_favourites(b, CATALOG, 1.0, cfg, Recording(5))
    assert all(x.shape == (len(CATALOG),) for x in seen)  # dense: every catalog item
    assert "i0007" in fa and "i0007" in fb
    assert set(fa) ^ set(fb) <= {"i0100"}


def test_a_strong_favourite_survives_the_noise_of_epsilon_8() -> None:
    from userlayer.sdk.privacy import noise_multiplier

    z = noise_multiplier(8.0, 1e-5, 1.0, 1)
    events = ["i0042"] * 20 + [f"i{n:04d}" for n in range(100, 180)]
    favs = select_favourites(events, CATALOG, z, FavouritesConfig(), SecureRandom())
    assert favs[-1] == "i0042"


@pytest.mark.parametrize(
    "kw", [{"k": -1}, {"k": 65}, {"alpha": 0.0}, {"alpha": 1.0}, {"min_count": 0.5}]
)
def test_config_is_validated(kw: dict[str, float]) -> None:
    with pytest.raises(PrivacyError):
        FavouritesConfig(**kw)  # type: ignore[arg-type]
    with pytest.raises(PrivacyError, match="sigma"):
        favourite_threshold(-1.0, 10, FavouritesConfig())


def test_an_item_counts_once_per_day_whatever_its_events() -> None:
    """A view, a cart and a purchase of one item in one trip are one occasion (review finding)."""
    items = ["a", "a", "a", "b", "a", "b"]
    days = [10, 10, 10, 10, 11, 12]
    assert occasions(items, days) == ["a", "b", "a", "b"]
    with pytest.raises(PrivacyError, match="days"):
        occasions(items, days[:-1])
    # removing any one event changes one item's count by at most 1
    full = {i: occasions(items, days).count(i) for i in "ab"}
    for drop in range(len(items)):
        rest = occasions(items[:drop] + items[drop + 1 :], days[:drop] + days[drop + 1 :])
        moved = [abs(full[i] - rest.count(i)) for i in "ab"]
        assert sum(moved) <= 1


def test_threshold_holds_for_huge_catalogs() -> None:
    """The tail is computed from alpha / catalog, never from 1 - alpha / catalog (precision)."""
    t = favourite_threshold(1.0, 10**18, FavouritesConfig())
    assert t == pytest.approx(1 + stats.norm.isf(0.1 / 10**18), rel=1e-9)
