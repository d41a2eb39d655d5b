"""The privacy guarantees that the code must make true (each a regression of a found defect).

- predictable noise: DP noise and sampling came from a generator seeded with 0 (or the
  round number), so anyone who read the code could replay a training and subtract it;
- the unit: an event was in up to six examples while the record claimed per-example DP;
- the budget: check and record were separate steps, so two trainings at once overspent;
- the ledger's user pseudonym was an unkeyed SHA-256.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import secrets
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch

from tests.edge.conftest import make_events
from userlayer.edge.examples import ExampleConfig, UserExamples, user_examples
from userlayer.edge.exceptions import BudgetExceededError, StoreError
from userlayer.edge.local import LocalTrainConfig, train_and_seal
from userlayer.edge.privacy import LEGACY_GROUP, PrivacyLedger
from userlayer.edge.profile import build_profile
from userlayer.edge.training import DPConfig, TrainConfig, train_adapter
from userlayer.sdk.adapter import open_package
from userlayer.sdk.model import AdapterConfig, ModelConfig, Recommender, new_adapter
from userlayer.sdk.model.tokens import ContextVocab
from userlayer.sdk.privacy import Mechanism, epsilon
from userlayer.sdk.schemas import Event, Service
from userlayer.sdk.semantic_ids import SemanticIdTable

CFG = ModelConfig(
    level_sizes=(8, 8), d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32, dropout=0.0
)
ACFG = AdapterConfig(rank=2, alpha=4.0)
ITEMS = {f"i{k}": (k // 8, k % 8) for k in range(48)}
TABLE = SemanticIdTable(
    codes=ITEMS, services=dict.fromkeys(ITEMS, Service.SAMOKAT), level_sizes=(8, 8)
)
NOW = datetime(2024, 3, 5, tzinfo=UTC)


def _model() -> Recommender:
    torch.manual_seed(0)
    return Recommender(CFG).eval()


def _examples(events: list[Event], prompt: str = "event") -> UserExamples:
    prof = build_profile(events, now=NOW)
    return user_examples(prof, TABLE, ContextVocab(CFG.geo_buckets), ExampleConfig(prompt=prompt))


def _ledger(path: str | Path = ":memory:", budget: float = 1e9) -> PrivacyLedger:
    return PrivacyLedger(path, secrets.token_bytes(32), budget=budget)


DP = TrainConfig(epochs=2, batch_size=8, max_steps=12, dp=DPConfig(target_epsilon=2.0))


# -- predictable noise ---------------------------------------------------------------------


def test_an_attacker_who_reads_the_code_cannot_replay_the_noise() -> None:
    """The default configuration (what an attacker knows) must not reproduce a training."""
    model, ex = _model(), _examples(make_events("alice", 30))
    init = new_adapter(CFG, ACFG, torch.Generator().manual_seed(0))
    released = train_adapter(model, ACFG, ex, init, DP, _ledger(), "alice", NOW)
    replay = train_adapter(model, ACFG, ex, init, DP, _ledger(), "alice", NOW)  # same data too
    assert released.privacy is not None and released.privacy.rng == "os-csprng"
    assert released.privacy.private
    assert not torch.equal(released.adapter["prefix"], replay.adapter["prefix"])
    assert released.batch_sizes != replay.batch_sizes  # Poisson sampling is fresh as well


def test_the_seed_hook_replays_exactly_and_says_not_private() -> None:
    model, ex = _model(), _examples(make_events("alice", 30))
    init = new_adapter(CFG, ACFG, torch.Generator().manual_seed(0))
    seeded = TrainConfig(**{**DP.__dict__, "seed": 5})
    a = train_adapter(model, ACFG, ex, init, seeded, _ledger(), "alice", NOW)
    b = train_adapter(model, ACFG, ex, init, seeded, _ledger(), "alice", NOW)
    assert torch.equal(a.adapter["prefix"], b.adapter["prefix"])  # the noise is subtractable
    assert a.privacy is not None and not a.privacy.private
    assert a.privacy.rng == "seeded:5 (not private)"


# -- the privacy unit -----------------------------------------------------------------------


def _changed_rows(a: UserExamples, b: UserExamples) -> int:
    ra = {
        (tuple(t.tolist()), tuple(c.flatten().tolist()))
        for t, c in zip(a.tokens, a.ctx, strict=True)
    }
    rb = {
        (tuple(t.tolist()), tuple(c.flatten().tolist()))
        for t, c in zip(b.tokens, b.ctx, strict=True)
    }
    return len(ra ^ rb)  # examples added or removed between the two sets


@pytest.mark.parametrize("prompt", ["event", "session"])
def test_one_event_changes_at_most_group_examples(prompt: str) -> None:
    evs = make_events("alice", 30)
    ex = _examples(evs, prompt)
    mid = 14  # in the middle of the history: inside the next examples' sessions
    changed = [*evs[:mid], evs[mid].model_copy(update={"item_id": "i47"}), *evs[mid + 1 :]]
    removed = [*evs[:mid], *evs[mid + 1 :]]
    # the unit is the add/remove of an event; changing one is a removal and an addition
    assert 1 <= _changed_rows(ex, _examples(removed, prompt)) <= ex.group
    assert 1 <= _changed_rows(ex, _examples(changed, prompt)) <= 2 * ex.group
    if prompt == "event":
        assert ex.group == 1 and _changed_rows(ex, _examples(removed, prompt)) == 1
    else:  # a session prompt holds the event in later examples too, which the group covers
        assert ex.group == 11 and _changed_rows(ex, _examples(changed, prompt)) > 2


def test_the_ledger_charges_the_group() -> None:
    model, ex = _model(), _examples(make_events("alice", 30), "session")
    led = _ledger()
    res = train_adapter(model, ACFG, ex, new_adapter(CFG, ACFG), DP, led, "alice", NOW)
    rec = res.privacy
    assert rec is not None and rec.examples_per_unit == 11 and rec.unit == "event"
    mech = Mechanism(rec.noise_multiplier, rec.sample_rate, rec.steps)
    assert rec.epsilon == pytest.approx(epsilon([mech], 1e-5, "prv", group=11), rel=1e-9)
    assert rec.epsilon <= 2.0  # the noise was solved for the per-event target
    assert [e.group for e in led.entries("alice")] == [11]


def test_training_weighs_events_against_the_clock_not_the_last_event(tmp_path: Path) -> None:
    # events of two years ago: against the wall clock they are past the data horizon
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    old = make_events("alice", 20, start_day=-800 + (datetime.now(UTC) - NOW).days)
    args = (_model(), TABLE, ACFG, old, new_adapter(CFG, ACFG), LocalTrainConfig())
    rest = (_ledger(), "alice", 1, "fp", Ed25519PrivateKey.generate())
    assert train_and_seal(*args, *rest).local["examples"] == 0  # noise-only: past the horizon
    res = train_and_seal(*args, *rest, now=old[-1].timestamp + timedelta(days=1))
    assert res.local["examples"] == 20


# -- the budget -------------------------------------------------------------------------------


def _train_in_process(path: str, key: bytes, out: mp.Queue) -> None:  # type: ignore[type-arg]
    torch.set_num_threads(1)
    led = PrivacyLedger(path, key, budget=2.5)
    ex = _examples(make_events("alice", 30))
    cfg = TrainConfig(epochs=4, batch_size=8, max_steps=60, dp=DPConfig(target_epsilon=2.0))
    try:
        train_adapter(_model(), ACFG, ex, new_adapter(CFG, ACFG), cfg, led, "alice", NOW)
        out.put("trained")
    except BudgetExceededError:
        out.put("refused")


def test_two_trainings_at_once_never_exceed_the_budget(tmp_path: Path) -> None:
    path, key = str(tmp_path / "ledger.db"), secrets.token_bytes(32)
    PrivacyLedger(path, key).close()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_train_in_process, args=(path, key, out)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    got = sorted(out.get(timeout=5) for _ in procs)
    assert got == ["refused", "trained"]  # each alone fits (2 <= 2.5); both would not
    led = PrivacyLedger(path, key, budget=2.5)
    assert len(led.entries("alice")) == 1 and led.spent("alice", NOW) <= 2.5


def test_a_reservation_is_released_on_failure_and_kept_on_a_crash(tmp_path: Path) -> None:
    led = _ledger(tmp_path / "l.db", budget=5.0)
    mech = Mechanism(2.0, 0.2, 20)
    with pytest.raises(RuntimeError), led.reserve("alice", mech, now=NOW):
        raise RuntimeError("training failed before anything was released")
    assert led.entries("alice") == []
    res = led.reserve("alice", mech, now=NOW)  # the process dies here: never committed
    assert [e.status for e in led.entries("alice")] == ["reserved"]
    assert led.spent("alice", NOW) == pytest.approx(res.entry.epsilon_after)
    assert res.commit().status == "spent"
    with pytest.raises(BudgetExceededError, match="over the budget"):
        led.reserve("alice", Mechanism(0.5, 0.5, 100), now=NOW)
    assert len(led.entries("alice")) == 1


def test_ledger_pseudonyms_are_keyed_and_format_1_rows_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    legacy = hashlib.sha256(b"userlayer.ledger/1|alice").hexdigest()[:32]
    db = sqlite3.connect(path)  # a format-1 ledger, as the old code wrote it
    db.execute(
        "CREATE TABLE ledger(user TEXT NOT NULL, time TEXT NOT NULL, noise REAL NOT NULL, "
        "rate REAL NOT NULL, steps INTEGER NOT NULL, eps REAL NOT NULL, delta REAL NOT NULL, "
        "accountant TEXT NOT NULL, lib TEXT NOT NULL)"
    )
    row = (legacy, NOW.isoformat(), 2.0, 0.2, 20, 1.0, 1e-5, "rdp", "opacus 1.6.0")
    db.execute("INSERT INTO ledger VALUES (?,?,?,?,?,?,?,?,?)", row)
    db.commit()
    db.close()
    key = secrets.token_bytes(32)
    led = PrivacyLedger(path, key)
    entries = led.entries("alice")  # moved to the keyed pseudonym, charged the old group
    assert len(entries) == 1 and entries[0].group == LEGACY_GROUP
    assert led.spent("alice", NOW) == pytest.approx(
        epsilon([Mechanism(2.0, 0.2, 20)], 1e-5, "prv", LEGACY_GROUP)
    )
    led.reserve("bob", Mechanism(2.0, 0.2, 20), now=NOW).commit()
    led.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("l.db*"))
    for name in ("alice", "bob"):
        unkeyed = hashlib.sha256(b"userlayer.ledger/1|" + name.encode()).hexdigest()[:32]
        assert unkeyed.encode() not in raw and name.encode() not in raw
    # the rows are named under the store's key: another key is refused, not silently empty
    with pytest.raises(StoreError, match="re-keyed"):
        PrivacyLedger(path, secrets.token_bytes(32)).entries("bob")
    assert len(PrivacyLedger(path, key).entries("bob")) == 1


def test_the_package_records_the_unit_and_the_randomness(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from userlayer.sdk.adapter import key_id

    key = Ed25519PrivateKey.generate()
    evs = make_events("alice", 24)
    res = train_and_seal(
        _model(), TABLE, ACFG, evs, new_adapter(CFG, ACFG), LocalTrainConfig(epsilon=1.0),
        _ledger(), "alice", 1, "fp", key, now=NOW,
    )  # fmt: skip
    pkg = open_package(res.packages["samokat"], {key_id(key.public_key()): key.public_key()})
    rec = pkg.manifest.privacy
    assert pkg.manifest.format == "userlayer.adapter/2"
    assert rec is not None and rec.unit == "event" and rec.rng == "os-csprng"
    assert rec.accountant == "prv" and rec.examples_per_unit == 1 and rec.epsilon <= 1.0


# -- found by the attacker review: the mechanism must not depend on the data ----------------


def test_the_mechanism_does_not_reveal_how_many_events_a_user_has() -> None:
    """Defect: q = batch / examples and steps = epochs / q were published in the manifest, so
    one event more or less changed them, and the example count and loss went to the cloud."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    model, key = _model(), Ed25519PrivateKey.generate()
    records, metrics = [], []
    for n in (30, 31, 0):
        res = train_and_seal(
            model, TABLE, ACFG, make_events("alice", n), new_adapter(CFG, ACFG),
            LocalTrainConfig(epochs=2, epsilon=1.0), _ledger(), "alice", 1, "fp", key, now=NOW,
            services=("samokat", "kuper"),
        )  # fmt: skip
        rec = res.privacy
        records.append((rec.sample_rate, rec.steps, rec.noise_multiplier, rec.epsilon))
        metrics.append(res.metrics)
        assert set(res.packages) == {"samokat", "kuper"}  # whatever events she has
    assert records[0] == records[1] == records[2]
    assert all(set(m) == {"epsilon_user"} for m in metrics)  # nothing else for the cloud


def test_the_data_horizon_is_the_ledgers_window() -> None:
    """Defect: the horizon was inclusive and the window strict, so an event exactly one period
    old was seen by two trainings whose ledger entries never composed."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    led = PrivacyLedger(":memory:", secrets.token_bytes(32), budget=100.0, period_days=10.0)
    (ev,) = make_events("alice", 1)
    args = (_model(), TABLE, ACFG, [ev], new_adapter(CFG, ACFG), LocalTrainConfig(epochs=1))
    rest = (led, "alice", 1, "fp", Ed25519PrivateKey.generate())
    first = train_and_seal(*args, *rest, now=ev.timestamp)
    later = train_and_seal(*args, *rest, now=ev.timestamp + timedelta(days=10))
    assert first.local["examples"] == 1 and later.local["examples"] == 0
    # the first entry is outside the second's window (now - period < t is false at t)
    assert led.spent("alice", ev.timestamp + timedelta(days=10)) < first.privacy.epsilon * 2


def test_a_forget_rekeys_the_ledger(tmp_path: Path) -> None:
    """Defect (review): the pseudonym key outlived forgets, so an old copy of the ledger and
    today's key still found the forgotten user's training times."""
    import shutil

    path = tmp_path / "l.db"
    key = secrets.token_bytes(32)
    source = {"key": key}
    led = PrivacyLedger(path, lambda: source["key"], budget=50.0)
    other = PrivacyLedger(path, lambda: source["key"], budget=50.0)  # another worker
    for u in ("alice", "bob"):
        led.reserve(u, Mechanism(2.0, 0.1, 20), now=NOW).commit()
    bob_spent = led.spent("bob", NOW)
    led.close()
    for suffix in ("", "-wal"):  # a backup of the ledger as it is on disk now
        if (tmp_path / f"l.db{suffix}").exists():
            shutil.copy(tmp_path / f"l.db{suffix}", tmp_path / f"copy.db{suffix}")
    led = PrivacyLedger(path, lambda: source["key"], budget=50.0)
    led.forget("alice")
    source["key"] = secrets.token_bytes(32)
    assert led.rekey(["bob"], source["key"]) == 1
    assert led.spent("bob", NOW) == pytest.approx(bob_spent)  # nobody's budget is lost
    assert other.spent("bob", NOW) == pytest.approx(bob_spent)  # the other worker follows
    old = PrivacyLedger(tmp_path / "copy.db", source["key"], budget=50.0)  # today's key
    with pytest.raises(StoreError, match="re-keyed"):  # the old copy is not under it
        old.entries("alice")
    assert hmac_rows(tmp_path / "copy.db", source["key"], "alice") == 0


def hmac_rows(path: Path, key: bytes, user: str) -> int:
    import hmac

    who = hmac.new(key, b"userlayer.ledger/2|" + user.encode(), "sha256").hexdigest()[:32]
    con = sqlite3.connect(path)
    n = con.execute("SELECT count(*) FROM entries WHERE user=?", (who,)).fetchone()[0]
    con.close()
    return int(n)


def test_a_nan_epsilon_is_never_within_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    led = _ledger(budget=8.0)
    monkeypatch.setattr(led, "_epsilon", lambda *a, **k: float("nan"))
    with pytest.raises(BudgetExceededError):
        led.reserve("alice", Mechanism(1.0, 0.1, 10), now=NOW)
