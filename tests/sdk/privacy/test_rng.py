"""DP randomness: the OS CSPRNG by default, a seed only as a labelled test hook."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy import stats

from userlayer.sdk.privacy import OS_SOURCE, SecureRandom, SeededRandom, dp_random


def test_secure_draws_are_never_the_same_twice() -> None:
    a, b = SecureRandom(), SecureRandom()
    assert not np.array_equal(a.gaussian((64,), 1.0), b.gaussian((64,), 1.0))
    assert not np.array_equal(a.uniform(64), a.uniform(64))
    assert a.private and a.source == OS_SOURCE


def test_secure_uniforms_and_gaussians_have_the_right_law() -> None:
    rng = SecureRandom()
    u = rng.uniform(200_000)
    assert u.dtype == np.float64 and float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-4
    z = rng.gaussian((400, 500), 2.5)
    assert z.shape == (400, 500)
    flat = z.ravel() / 2.5
    assert abs(float(flat.mean())) < 0.01 and abs(float(flat.std()) - 1.0) < 0.01
    assert stats.kstest(flat, "norm").pvalue > 1e-4
    assert abs(float(stats.kurtosis(flat))) < 0.05  # Gaussian tails, not a uniform sum
    assert rng.gaussian((0,), 1.0).shape == (0,)


def test_a_seed_is_a_labelled_test_hook(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="userlayer.sdk.privacy.rng"):
        a, b = dp_random(7), dp_random(7)
    assert "NOT private" in caplog.text
    assert isinstance(a, SeededRandom) and not a.private and "not private" in a.source
    np.testing.assert_array_equal(a.gaussian((5,), 1.0), b.gaussian((5,), 1.0))
    assert isinstance(dp_random(), SecureRandom) and dp_random(None).private
