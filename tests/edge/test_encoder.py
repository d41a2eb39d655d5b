"""Way (b) on the edge: the profile release's epsilon, budget, randomness and isolation."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from tests.edge.conftest import make_events
from tests.edge.test_training import ledger
from userlayer.edge.encoder import release_profile, zero_adapter
from userlayer.edge.exceptions import BudgetExceededError, TrainingError
from userlayer.sdk.model import AdapterConfig, ModelConfig, Recommender
from userlayer.sdk.privacy import Mechanism, epsilon, noise_multiplier
from userlayer.sdk.schemas import Service
from userlayer.sdk.semantic_ids import SemanticIdTable

CFG = ModelConfig(
    level_sizes=(8, 8), d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=48, profile_dim=8
)
ACFG = AdapterConfig(rank=2, alpha=4.0)
ITEMS = {f"i{k}": (k // 8, k % 8) for k in range(40)}
TABLE = SemanticIdTable(
    codes=ITEMS, services=dict.fromkeys(ITEMS, Service.SAMOKAT), level_sizes=(8, 8)
)


@pytest.fixture(scope="module")
def model() -> Recommender:
    torch.manual_seed(0)
    return Recommender(CFG).eval()


def test_the_release_costs_what_the_accountant_says(model: Recommender) -> None:
    events = make_events("alice", 30)
    led = ledger(budget=8.0)
    now = events[-1].timestamp + timedelta(hours=1)
    rel = release_profile(model, ACFG, TABLE, events, 2.0, led, "alice", now=now)
    rec = rel.record
    z = noise_multiplier(2.0, led.delta, 1.0, 1, led.accountant)
    assert rec.noise_multiplier == pytest.approx(z)
    assert rec.epsilon == pytest.approx(epsilon([Mechanism(z, 1.0, 1)], led.delta, "prv"))
    assert rec.epsilon <= 2.0
    assert (rec.mechanism, rec.unit, rec.sample_rate, rec.steps, rec.clip) == (
        "profile",
        "event",
        1.0,
        1,
        1.0,
    )
    assert rec.private and rec.rng == "os-csprng"
    [entry] = led.entries("alice")
    assert entry.status == "spent" and entry.mechanism == Mechanism(z, 1.0, 1)
    assert rel.events == 30
    assert set(rel.adapter) == set(zero_adapter(model, ACFG))
    assert rel.adapter["prefix"].shape == (ACFG.n_prefix, CFG.d_model)


def test_a_user_over_budget_gets_no_new_layer(model: Recommender) -> None:
    events = make_events("bob", 10)
    led = ledger(budget=2.5)
    now = events[-1].timestamp + timedelta(hours=1)
    release_profile(model, ACFG, TABLE, events, 2.0, led, "bob", now=now)
    with pytest.raises(BudgetExceededError, match="over the budget"):
        release_profile(model, ACFG, TABLE, events, 2.0, led, "bob", now=now)
    assert len(led.entries("bob")) == 1  # the refused release left nothing behind


def test_the_noise_is_fresh_and_the_seed_is_only_a_test_hook(model: Recommender) -> None:
    events = make_events("carol", 12)
    now = events[-1].timestamp + timedelta(hours=1)

    def prefix(seed: int | None) -> torch.Tensor:
        led = ledger(budget=100.0)
        rel = release_profile(model, ACFG, TABLE, events, 8.0, led, "c", now=now, seed=seed)
        if seed is not None:
            assert not rel.record.private and "not private" in rel.record.rng
        return rel.adapter["prefix"]

    assert not torch.equal(prefix(None), prefix(None))
    assert torch.equal(prefix(3), prefix(3))


def test_only_events_inside_the_horizon_and_before_now_count(model: Recommender) -> None:
    events = make_events("dan", 10)
    led = ledger(budget=100.0, period_days=1.0)
    now = events[4].timestamp  # events 0..4 are not newer than now; 5.. are in the future
    rel = release_profile(model, ACFG, TABLE, events, 8.0, led, "dan", now=now)
    assert rel.events == 5
    old = make_events("dan", 3, start_day=-30)
    rel = release_profile(model, ACFG, TABLE, old + events[:5], 8.0, led, "dan", now=now)
    assert rel.events == 5  # a month old: outside the one-day period


def test_a_new_user_gets_a_layer_at_once(model: Recommender) -> None:
    events = make_events("erin", 5)
    led = ledger(budget=8.0)
    t0 = time.perf_counter()
    now = events[-1].timestamp + timedelta(minutes=5)
    rel = release_profile(model, ACFG, TABLE, events, 8.0, led, "erin", now=now)
    assert time.perf_counter() - t0 < 30  # no training: a bound for a loaded machine only
    assert rel.events == 5 and float(rel.adapter["prefix"].abs().sum()) > 0


def test_a_base_without_encoder_or_a_misfit_adapter_is_refused(model: Recommender) -> None:
    events = make_events("fay", 5)
    plain = Recommender(
        ModelConfig(level_sizes=(8, 8), d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=48)
    )
    with pytest.raises(TrainingError, match="no profile encoder"):
        release_profile(plain, ACFG, TABLE, events, 8.0, ledger(), "fay")
    with pytest.raises(TrainingError, match="prefix vectors"):
        release_profile(model, AdapterConfig(n_prefix=1), TABLE, events, 8.0, ledger(), "fay")


def test_the_encoder_runs_without_the_cloud(tmp_path: Path) -> None:
    code = (
        "import sys, userlayer.edge.encoder;"
        "bad = [m for m in sys.modules if m.startswith('userlayer.cloud')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


@pytest.mark.parametrize(("way", "entries", "mechanism"), [
    ("profile", 1, "profile"), ("both", 2, "profile+dp-sgd"), ("dp-sgd", 1, "dp-sgd"),
    ("auto", 1, "profile"),  # the default: the encoder when the base has one
])  # fmt: skip
def test_every_way_seals_a_package_that_names_its_mechanism(
    model: Recommender, way: str, entries: int, mechanism: str
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from userlayer.edge.local import LocalTrainConfig, train_and_seal
    from userlayer.sdk.adapter import key_id, open_package
    from userlayer.sdk.model import new_adapter

    events = make_events("gus", 20)
    led = ledger(budget=100.0)
    key = Ed25519PrivateKey.generate()
    now = events[-1].timestamp + timedelta(hours=1)
    cfg = LocalTrainConfig(epochs=1, epsilon=4.0, way=way)
    res = train_and_seal(
        model, TABLE, ACFG, events, new_adapter(CFG, ACFG), cfg, led, "gus", 1, "fp", key,
        now=now, services=("samokat",),
    )  # fmt: skip
    assert len(led.entries("gus")) == entries
    pkg = open_package(res.packages["samokat"], {key_id(key.public_key()): key.public_key()})
    rec = pkg.manifest.privacy
    assert rec is not None and rec.mechanism == mechanism and rec.epsilon <= 4.0 + 1e-6
    assert res.metrics == {"epsilon_user": rec.epsilon}
    with pytest.raises(TrainingError, match="way"):
        LocalTrainConfig(way="magic")


def test_auto_trains_with_dp_sgd_when_the_base_has_no_encoder() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from userlayer.edge.local import LocalTrainConfig, train_and_seal
    from userlayer.sdk.model import new_adapter

    plain_cfg = ModelConfig(level_sizes=(8, 8), d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                            d_ff=48)  # fmt: skip
    plain = Recommender(plain_cfg).eval()
    events = make_events("hal", 12)
    res = train_and_seal(
        plain, TABLE, ACFG, events, new_adapter(plain_cfg, ACFG), LocalTrainConfig(epochs=1),
        ledger(budget=100.0), "hal", 1, "fp", Ed25519PrivateKey.generate(),
        now=events[-1].timestamp, services=("samokat",),
    )  # fmt: skip
    assert res.privacy.mechanism == "dp-sgd"


def test_setup_errors_are_the_same_for_every_user(model: Recommender) -> None:
    # review finding: a poisoned code row made only its holders' releases fail (NaN),
    # a mismatched table only some users' (IndexError), a naive clock only users with events
    import copy

    events = make_events("ivy", 6)
    now = events[-1].timestamp
    bad = copy.deepcopy(model)
    assert bad.profile is not None
    with torch.no_grad():
        bad.profile.code.weight[3] = float("nan")
    for evs in (events, []):
        with pytest.raises(TrainingError, match="non-finite"):
            release_profile(bad, ACFG, TABLE, evs, 8.0, ledger(), "ivy", now=now)
        other = SemanticIdTable(codes={}, services={}, level_sizes=(4, 4))
        with pytest.raises(TrainingError, match="levels"):
            release_profile(model, ACFG, other, evs, 8.0, ledger(), "ivy", now=now)
        with pytest.raises(TrainingError, match="timezone"):
            release_profile(
                model, ACFG, TABLE, evs, 8.0, ledger(), "ivy", now=now.replace(tzinfo=None)
            )


def test_both_ways_spend_nothing_when_the_second_release_would_not_fit(
    model: Recommender,
) -> None:
    # review finding: the profile's share was spent before DP-SGD was refused
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from userlayer.edge.local import LocalTrainConfig, train_and_seal
    from userlayer.sdk.model import new_adapter

    events = make_events("jo", 20)
    led = ledger(budget=4.0)
    cfg = LocalTrainConfig(epochs=1, epsilon=4.0, way="both", prompt="session")  # group 11
    with pytest.raises(BudgetExceededError, match="planned releases"):
        train_and_seal(
            model, TABLE, ACFG, events, new_adapter(CFG, ACFG), cfg, led, "jo", 1, "fp",
            Ed25519PrivateKey.generate(), now=events[-1].timestamp, services=("samokat",),
        )  # fmt: skip
    assert led.entries("jo") == []


def _repeat_heavy(user: str) -> list:  # type: ignore[type-arg]
    """33 events: item i3 on 20 days (one day with a view, a cart and a purchase of it),
    then ten other items once each."""
    events = make_events(user, 33)
    out = []
    for k, e in enumerate(events):
        day = min(k, 19) if k < 22 else 20
        t = events[0].timestamp + timedelta(days=day, hours=k)
        out.append(e.model_copy(update={"item_id": "i3" if k < 22 else e.item_id, "timestamp": t}))
    return out


def test_favourites_ride_in_the_same_mechanism_at_the_stated_noise(model: Recommender) -> None:
    from userlayer.sdk.privacy.favourites import FavouritesConfig

    events = _repeat_heavy("hal")
    now = events[-1].timestamp + timedelta(hours=1)
    plain_led, fav_led = ledger(budget=8.0), ledger(budget=8.0)
    plain = release_profile(model, ACFG, TABLE, events, 8.0, plain_led, "hal", now=now)
    fcfg = FavouritesConfig(k=5, share=0.5)
    rel = release_profile(model, ACFG, TABLE, events, 8.0, fav_led, "hal", now=now, favourites=fcfg)
    z = noise_multiplier(8.0, fav_led.delta, 1.0, 1, fav_led.accountant)
    # one Gaussian mechanism of sensitivity 1 per event, charged once, as without favourites
    assert [e.mechanism for e in fav_led.entries("hal")] == [Mechanism(z, 1.0, 1)]
    assert rel.record.epsilon == pytest.approx(plain.record.epsilon)
    assert rel.record.favourites_noise == pytest.approx(z / 0.5**0.5)
    assert plain.favourites == () and plain.record.favourites_noise == 0.0
    # i3 on 20 days (22 events) against noise of std 0.85 over a 40-item catalog
    assert rel.favourites and rel.favourites[-1] == "i3"


def test_the_sealed_package_carries_the_favourites(model: Recommender) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from userlayer.edge.local import LocalTrainConfig, train_and_seal
    from userlayer.sdk.adapter import key_id, open_package
    from userlayer.sdk.model import new_adapter

    events = _repeat_heavy("ivy")
    key = Ed25519PrivateKey.generate()
    now = events[-1].timestamp + timedelta(hours=1)
    trusted = {key_id(key.public_key()): key.public_key()}
    for k, expect in ((10, True), (0, False)):
        cfg = LocalTrainConfig(epsilon=8.0, way="profile", favourites=k)
        res = train_and_seal(
            model, TABLE, ACFG, events, new_adapter(CFG, ACFG), cfg, ledger(budget=8.0), "ivy",
            1, "fp", key, now=now, services=("samokat",),
        )  # fmt: skip
        m = open_package(res.packages["samokat"], trusted).manifest
        assert ("i3" in m.favourites) is expect
        assert m.privacy is not None and (m.privacy.favourites_noise > 0) is expect
    with pytest.raises(TrainingError, match="favourites"):
        LocalTrainConfig(favourites=65)
