"""Accounting: the pinned accountants' values, a grid wide enough for RDP, group privacy."""

from __future__ import annotations

import math
import warnings

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from userlayer.sdk.exceptions import PrivacyError
from userlayer.sdk.privacy import RDP_ORDERS, Mechanism, epsilon, noise_multiplier


@pytest.mark.parametrize("mech", [(1.1, 0.2, 40), (3.0, 16 / 60, 30), (2.0, 1.0, 8)])
def test_epsilon_is_the_pinned_accountants_value(mech: tuple[float, float, int]) -> None:
    prv, rdp = PRVAccountant(), RDPAccountant()
    prv.history = rdp.history = [mech]
    m = Mechanism(*mech)
    assert epsilon([m], 1e-5, "prv") == pytest.approx(
        prv.get_epsilon(1e-5, eps_error=0.01), rel=1e-9
    )
    assert epsilon([m], 1e-5, "rdp") == pytest.approx(
        rdp.get_epsilon(1e-5, alphas=list(RDP_ORDERS)), rel=1e-9
    )
    assert epsilon([m], 1e-5, "prv") < epsilon([m], 1e-5, "rdp")  # PRV is tighter


def test_rdp_grid_reaches_the_optimal_order() -> None:
    # much noise at a small rate: Opacus' default grid (up to 63) is too short and warns
    mech = (8.0, 0.01, 10)
    acc = RDPAccountant()
    acc.history = [mech]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        narrow = acc.get_epsilon(1e-5)
    assert any("optimal order is the largest alpha" in str(w.message).lower() for w in caught)
    wide = epsilon([Mechanism(*mech)], 1e-5, "rdp")
    assert wide < narrow
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        acc.get_epsilon(1e-5, alphas=list(RDP_ORDERS))
    assert not any("largest alpha" in str(w.message).lower() for w in caught)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_group_privacy_is_charged(accountant: str) -> None:
    m = Mechanism(4.0, 0.1, 50)
    e1 = epsilon([m], 1e-5, accountant)
    e3 = epsilon([m], 1e-5, accountant, group=3)
    assert e3 > 3 * e1  # k times the record-level epsilon at a smaller record-level delta
    # the returned value satisfies the group lemma: some record-level delta d with
    # 3 exp(2 e) d <= delta where the record-level epsilon e = e3 / 3
    e = e3 / 3
    d = 1e-5 / (3 * math.exp(2 * e))
    assert epsilon([m], d, accountant) <= e + 1e-12
    assert epsilon([m], 1e-5, accountant, group=1) == e1


def test_noise_is_solved_for_the_target() -> None:
    for accountant, group in (("prv", 1), ("rdp", 1), ("rdp", 4)):
        sigma = noise_multiplier(2.0, 1e-5, 0.25, 32, accountant, group)
        got = epsilon([Mechanism(sigma, 0.25, 32)], 1e-5, accountant, group)
        assert 2.0 * (1 - 0.006) <= got <= 2.0, (accountant, group, got)
    assert noise_multiplier(2.0, 1e-5, 0.25, 32, "rdp", 4) > noise_multiplier(
        2.0, 1e-5, 0.25, 32, "rdp"
    )


def test_tiny_noise_falls_back_to_rdp_for_prv() -> None:
    m = Mechanism(0.05, 0.2, 40)  # PRV's discretisation would run for minutes
    assert epsilon([m], 1e-5, "prv") == epsilon([m], 1e-5, "rdp")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"noise_multiplier": 0.0, "sample_rate": 0.1, "steps": 1}, "noise_multiplier"),
        ({"noise_multiplier": 1.0, "sample_rate": 1.5, "steps": 1}, "sample_rate"),
        ({"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 0}, "steps"),
        ({"noise_multiplier": float("nan"), "sample_rate": 0.1, "steps": 1}, "noise"),
    ],
)
def test_bad_mechanisms(kw: dict[str, float], match: str) -> None:
    with pytest.raises(PrivacyError, match=match):
        Mechanism(**kw)  # type: ignore[arg-type]


def test_bad_accounting_settings() -> None:
    m = Mechanism(1.0, 0.1, 1)
    with pytest.raises(PrivacyError, match="accountant"):
        epsilon([m], 1e-5, "moments")
    with pytest.raises(PrivacyError, match="delta"):
        epsilon([m], 1.0)
    with pytest.raises(PrivacyError, match="group"):
        epsilon([m], 1e-5, group=0)
    with pytest.raises(PrivacyError, match="target_epsilon"):
        noise_multiplier(-1.0, 1e-5, 0.1, 10)
