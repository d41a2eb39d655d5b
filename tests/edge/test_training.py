"""Local DP training: exact per-example gradients (vs Opacus), clipping, noise, sampling, budget.

The privacy-defect regressions (OS randomness, the event unit, the atomic budget) are in
``test_privacy.py``.
"""

from __future__ import annotations

import copy
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch

from tests.edge.conftest import make_events
from userlayer.edge.examples import ExampleConfig, UserExamples, user_examples
from userlayer.edge.exceptions import BudgetExceededError, TrainingError
from userlayer.edge.privacy import PrivacyLedger
from userlayer.edge.profile import build_profile
from userlayer.edge.training import (
    PERSONAL,
    DPConfig,
    TrainConfig,
    batch_grads,
    per_example_grads,
    train_adapter,
)
from userlayer.sdk.exceptions import PrivacyError
from userlayer.sdk.model import AdapterConfig, ModelConfig, Recommender, new_adapter
from userlayer.sdk.model.tokens import ContextVocab
from userlayer.sdk.privacy import epsilon, noise_multiplier
from userlayer.sdk.schemas import Service
from userlayer.sdk.semantic_ids import SemanticIdTable

CFG = ModelConfig(
    level_sizes=(8, 8), d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, dropout=0.0
)
ACFG = AdapterConfig(rank=2, alpha=4.0)


@pytest.fixture(scope="module")
def setup() -> tuple[Recommender, UserExamples]:
    torch.manual_seed(0)
    model = Recommender(CFG).eval()
    items = {f"i{k}": (k // 8, k % 8) for k in range(40)}
    table = SemanticIdTable(
        codes=items, services=dict.fromkeys(items, Service.SAMOKAT), level_sizes=(8, 8)
    )
    prof = build_profile(make_events("alice", 40))
    ex = user_examples(prof, table, ContextVocab(CFG.geo_buckets), ExampleConfig(holdout=1))
    return model, ex


def ledger(path: str | Path = ":memory:", **kw: float) -> PrivacyLedger:
    return PrivacyLedger(path, secrets.token_bytes(32), **kw)  # type: ignore[arg-type]


def test_examples_are_private_prompts(setup: tuple[Recommender, UserExamples]) -> None:
    _, ex = setup
    assert len(ex) == 39 and ex.group == 1 and ex.unit == "event"  # every event but the held-out
    n_items = (ex.tokens == 1).sum(1)  # CTX tokens: the prompt is the event's own context
    assert int(n_items.max()) == 1 and int(n_items.min()) == 1
    assert torch.all(ex.weights <= 1) and torch.all(ex.weights > 0)
    assert ex.weights[-1] == pytest.approx(1.0, abs=1e-3)


def test_session_prompts_and_their_group() -> None:
    items = {f"i{k}": (k // 8, k % 8) for k in range(40)}
    table = SemanticIdTable(
        codes=items, services=dict.fromkeys(items, Service.SAMOKAT), level_sizes=(8, 8)
    )
    cfg = ExampleConfig(holdout=1, prompt="session")
    sess = user_examples(build_profile(make_events("alice", 40)), table, ContextVocab(64), cfg)
    assert len(sess) == 38  # events 1..38: the first has no session before it
    # one-hour spacing and a 3-hour session: at most 3 history items + target
    n_items = (sess.tokens == 1).sum(1)
    assert int(n_items.max()) == 4 and int(n_items.min()) == 2
    assert sess.group == cfg.group == 11  # its own example, and 5 later ones changed
    with pytest.raises(TrainingError, match="`prompt` should be one of"):
        ExampleConfig(prompt="window")


def test_per_example_grads_are_exact(setup: tuple[Recommender, UserExamples]) -> None:
    model, ex = setup
    ad = {k: v + 0.05 * torch.randn(v.shape) for k, v in new_adapter(CFG, ACFG).items()}
    grads, _ = per_example_grads(
        model, ACFG, ad, ex.tokens[:4], ex.ctx[:4], ex.weights[:4], ex.mode_weights[:4]
    )
    for i in range(4):
        one, _ = per_example_grads(
            model,
            ACFG,
            ad,
            ex.tokens[i : i + 1],
            ex.ctx[i : i + 1],
            ex.weights[i : i + 1],
            ex.mode_weights[i : i + 1],
        )
        for k in ad:
            torch.testing.assert_close(grads[k][i], one[k][0], atol=1e-6, rtol=1e-5)


def test_only_named_tensors_are_differentiated_and_batch_grads_is_their_mean(
    setup: tuple[Recommender, UserExamples],
) -> None:
    model, ex = setup
    ad = {k: v + 0.05 * torch.randn(v.shape) for k, v in new_adapter(CFG, ACFG).items()}
    batch = (ex.tokens[:5], ex.ctx[:5], ex.weights[:5], ex.mode_weights[:5])
    full, losses = per_example_grads(model, ACFG, ad, *batch)
    some, losses2 = per_example_grads(model, ACFG, ad, *batch, names=PERSONAL)
    assert set(some) == set(PERSONAL) and set(full) == set(ad)
    torch.testing.assert_close(losses, losses2)
    for k in PERSONAL:
        torch.testing.assert_close(some[k], full[k], atol=1e-6, rtol=1e-5)
    names = ("prefix", "lora_a.q")
    mean, losses3 = batch_grads(model, ACFG, ad, names, *batch)
    assert set(mean) == set(names)
    torch.testing.assert_close(losses, losses3)
    for k in names:
        torch.testing.assert_close(mean[k], full[k].mean(0), atol=1e-6, rtol=1e-5)


def test_per_example_grads_match_opacus(setup: tuple[Recommender, UserExamples]) -> None:
    peft = pytest.importorskip("peft")
    opacus = pytest.importorskip("opacus")
    model, ex = setup
    acfg = AdapterConfig(
        rank=2, alpha=4.0, targets=("q", "v", "up", "down"), n_prefix=0, film=False, n_modes=0
    )
    ad = {k: v + 0.05 * torch.randn(v.shape) for k, v in new_adapter(CFG, acfg).items()}
    ones = torch.ones(6)
    ours, _ = per_example_grads(model, acfg, ad, ex.tokens[:6], ex.ctx[:6], ones)
    lcfg = peft.LoraConfig(
        r=2, lora_alpha=4.0, target_modules=["q", "v", "up", "down"], lora_dropout=0.0
    )
    pm = peft.get_peft_model(copy.deepcopy(model), lcfg)
    base = pm.base_model.model
    with torch.no_grad():
        for t in acfg.targets:
            part = "attn" if t in ("q", "v") else "mlp"
            for layer in range(CFG.n_layers):
                mod = getattr(getattr(base.blocks[layer], part), t)
                mod.lora_A["default"].weight.copy_(ad[f"lora_a.{t}"][layer])
                mod.lora_B["default"].weight.copy_(ad[f"lora_b.{t}"][layer])
    gsm = opacus.GradSampleModule(base, batch_first=True, loss_reduction="sum")
    base.loss(ex.tokens[:6], ex.ctx[:6], reduction="none", last_item_only=True).sum().backward()
    for t in acfg.targets:
        part = "attn" if t in ("q", "v") else "mlp"
        for layer in range(CFG.n_layers):
            mod = getattr(getattr(base.blocks[layer], part), t)
            torch.testing.assert_close(
                mod.lora_A["default"].weight.grad_sample,
                ours[f"lora_a.{t}"][:, layer],
                atol=1e-5,
                rtol=1e-4,
            )
            torch.testing.assert_close(
                mod.lora_B["default"].weight.grad_sample,
                ours[f"lora_b.{t}"][:, layer],
                atol=1e-5,
                rtol=1e-4,
            )
    del gsm


def test_clipping_bound_and_noise_scale(
    setup: tuple[Recommender, UserExamples], monkeypatch: pytest.MonkeyPatch
) -> None:
    import userlayer.edge.training as tr

    model, ex = setup
    seen: list[torch.Tensor] = []
    real = tr.per_example_grads

    def spy(*a: object, **k: object) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        g, loss = real(*a, **k)  # type: ignore[arg-type]
        for v in g.values():
            v.mul_(1000.0)  # make every example's gradient far larger than the bound
        seen.append(torch.sqrt(sum((v.flatten(1) ** 2).sum(1) for v in g.values())))  # type: ignore[arg-type]
        return g, loss

    monkeypatch.setattr(tr, "per_example_grads", spy)
    init = new_adapter(CFG, ACFG, torch.Generator().manual_seed(0))
    # zero noise, SGD-like check: the total update of one step is bounded by clip * b / (q N)
    calls = {}

    class Spy(torch.optim.Adam):
        def step(self, closure=None):  # type: ignore[no-untyped-def,override]
            calls["norm"] = torch.sqrt(
                sum((p.grad**2).sum() for g in self.param_groups for p in g["params"])
            )
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "Adam", Spy)
    # sample rate 0.5: an empty Poisson batch (0.5^39) cannot make the check vacuous; at the
    # default 0.1 it happened 1.6% of the time (0.9^39), failing `b > 0` at random
    cfg = TrainConfig(
        epochs=1,
        batch_size=8,
        max_steps=1,
        sample_rate=0.5,
        dp=DPConfig(noise_multiplier=1e-6, target_epsilon=None),
    )
    led = ledger(budget=float("inf"))
    res = train_adapter(model, ACFG, ex, init, cfg, led, "alice")
    b = res.batch_sizes[0]
    assert b > 0 and float(seen[0].min()) > 10  # raw per-example norms were far past clip 1
    assert float(calls["norm"]) <= 1.0 * b / (8 / len(ex) * len(ex)) + 1e-4
    # noise only (empty batch impossible to force: use a huge noise multiplier instead)
    cfg = TrainConfig(
        epochs=1,
        batch_size=8,
        max_steps=1,
        dp=DPConfig(noise_multiplier=100.0, target_epsilon=None),
    )
    train_adapter(model, ACFG, ex, init, cfg, led, "bob")
    n_params = sum(init[k].numel() for k in PERSONAL if k in init)  # the default trainables
    expected = 100.0 * 1.0 * (n_params**0.5) / 8  # std * sqrt(d) / expected batch
    assert 0.8 * expected < float(calls["norm"]) < 1.2 * expected


def test_poisson_sampling_varies_batch_sizes(setup: tuple[Recommender, UserExamples]) -> None:
    model, ex = setup
    init = new_adapter(CFG, ACFG)
    cfg = TrainConfig(
        epochs=50,
        sample_rate=0.25,
        max_steps=200,
        dp=DPConfig(noise_multiplier=1.0, target_epsilon=None),
    )
    res = train_adapter(model, ACFG, ex, init, cfg, ledger(budget=float("inf")), "a")
    sizes = torch.tensor(res.batch_sizes, dtype=torch.float32)
    q = 0.25  # public: the same for every user, never batch / examples
    assert len(set(res.batch_sizes)) > 4  # not a fixed batch size
    assert abs(float(sizes.mean()) - q * len(ex)) < 1.0
    assert abs(float(sizes.var()) - len(ex) * q * (1 - q)) < 3.0  # binomial variance


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_epsilon_equals_the_pinned_accountant(
    setup: tuple[Recommender, UserExamples], accountant: str
) -> None:
    from opacus.accountants import PRVAccountant, RDPAccountant

    from userlayer.sdk.privacy import RDP_ORDERS

    model, ex = setup
    led = PrivacyLedger(":memory:", secrets.token_bytes(32), budget=8.0, accountant=accountant)
    cfg = TrainConfig(epochs=4, batch_size=8, max_steps=30, dp=DPConfig(target_epsilon=3.0))
    res = train_adapter(model, ACFG, ex, new_adapter(CFG, ACFG), cfg, led, "alice")
    rec = res.privacy
    assert rec is not None and rec.library.startswith("opacus ") and rec.accountant == accountant
    assert rec.unit == "event" and rec.examples_per_unit == 1 and rec.rng == "os-csprng"

    def opacus_eps(history: list[tuple[float, float, int]]) -> float:
        acc = PRVAccountant() if accountant == "prv" else RDPAccountant()
        acc.history = history
        if accountant == "prv":
            return float(acc.get_epsilon(1e-5, eps_error=0.01))
        return float(acc.get_epsilon(1e-5, alphas=list(RDP_ORDERS)))

    hist = [(rec.noise_multiplier, rec.sample_rate, res.steps)]
    assert rec.epsilon == pytest.approx(opacus_eps(hist), rel=1e-9)
    assert 3.0 * 0.99 <= rec.epsilon <= 3.0  # the noise was solved for the target
    # the ledger composes across trainings
    res2 = train_adapter(model, ACFG, ex, res.adapter, cfg, led, "alice")
    assert res2.privacy is not None and res2.privacy.epsilon > rec.epsilon
    hist.append((res2.privacy.noise_multiplier, rec.sample_rate, res2.steps))
    assert led.spent("alice") == pytest.approx(opacus_eps(hist), rel=1e-9)
    assert len(led.entries("alice")) == 2 and led.spent("bob") == 0.0
    assert [e.status for e in led.entries("alice")] == ["spent", "spent"]


def test_budget_refusal_leaves_everything_as_it_was(
    setup: tuple[Recommender, UserExamples], tmp_path: Path
) -> None:
    model, ex = setup
    led = ledger(tmp_path / "l.db", budget=4.0)
    cfg = TrainConfig(epochs=4, batch_size=8, max_steps=30, dp=DPConfig(target_epsilon=3.0))
    init = new_adapter(CFG, ACFG)
    snapshot = {k: v.clone() for k, v in init.items()}
    train_adapter(model, ACFG, ex, init, cfg, led, "alice")
    before = led.entries("alice")
    with pytest.raises(BudgetExceededError, match=r"over the budget 4\.0"):
        train_adapter(model, ACFG, ex, init, cfg, led, "alice")
    assert led.entries("alice") == before
    assert all(torch.equal(init[k], snapshot[k]) for k in init)
    # a year later the old spend has left the rolling period
    later = datetime.now(UTC) + timedelta(days=366)
    res = train_adapter(model, ACFG, ex, init, cfg, led, "alice", now=later)
    assert res.privacy is not None and res.privacy.epsilon == pytest.approx(3.0, abs=0.05)


def test_non_private_training_lowers_the_loss(setup: tuple[Recommender, UserExamples]) -> None:
    model, ex = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(
        epochs=30, batch_size=8, max_steps=150, lr=1e-2, dp=DPConfig(enabled=False), trainable=None
    )
    res = train_adapter(model, ACFG, ex, new_adapter(CFG, ACFG), cfg)
    assert sum(res.losses[-10:]) / 10 < sum(res.losses[:10]) / 10 - 0.1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # base frozen
    assert res.privacy is None


def test_trainable_parts(setup: tuple[Recommender, UserExamples]) -> None:
    model, ex = setup
    init = new_adapter(CFG, ACFG)
    cfg = TrainConfig(epochs=2, max_steps=5, dp=DPConfig(enabled=False))
    res = train_adapter(model, ACFG, ex, init, cfg)
    for k in init:  # personal parts move, LoRA stays at the shared initialisation
        if k == "mode_prefix":  # no example states a mode: no gradient reaches it
            continue
        assert torch.equal(res.adapter[k], init[k]) == (k not in PERSONAL), k
    res = train_adapter(model, ACFG, ex, init, cfg, trainable=("lora_b.q",))
    assert not torch.equal(res.adapter["lora_b.q"], init["lora_b.q"])
    assert torch.equal(res.adapter["prefix"], init["prefix"])
    with pytest.raises(TrainingError, match="not adapter tensor names"):
        train_adapter(model, ACFG, ex, init, cfg, trainable=("prefx",))
    no_prefix = AdapterConfig(rank=2, n_prefix=0, film=False, n_modes=0)
    with pytest.raises(TrainingError, match="none of the trainable"):
        train_adapter(model, no_prefix, ex, new_adapter(CFG, no_prefix), cfg)


def test_bad_settings() -> None:
    with pytest.raises(TrainingError, match="exactly one"):
        DPConfig(noise_multiplier=1.0, target_epsilon=2.0)
    with pytest.raises(TrainingError, match="clip"):
        DPConfig(clip=0)
    with pytest.raises(TrainingError, match="lr"):
        TrainConfig(lr=2)
    with pytest.raises(PrivacyError, match="target_epsilon"):
        noise_multiplier(0, 1e-5, 0.1, 10)
    assert epsilon([], 1e-5) == 0.0
    with pytest.raises(TrainingError, match="32 bytes"):
        PrivacyLedger(":memory:", b"short")
    with pytest.raises(PrivacyError, match="accountant"):
        PrivacyLedger(":memory:", secrets.token_bytes(32), accountant="moments")
