"""Local training of one user's adapter, with DP-SGD, on the frozen base.

Exact per-example gradients come for free from the model's design: adapter
tensors are per-row inputs, so with the user's adapter repeated once per
example (a leaf tensor of shape (b, *shape)), row ``i``'s gradient after one
ordinary backward pass is exactly example ``i``'s gradient. No hooks, no
vmap; the cost is one batched forward and backward, like non-private
training. (``tests/edge/test_training.py`` checks these gradients against
Opacus' ``GradSampleModule`` on the peft-wrapped base.)

DP-SGD step: Poisson sampling with rate ``q`` (each example in each step
independently, uniforms from the OS CSPRNG), then Opacus' ``DPOptimizer`` fed
with those per-example gradients (``p.grad_sample``): every example's gradient
clipped to L2 norm ``clip`` over all trained tensors together, the sum plus
Gaussian noise ``N(0, (noise_multiplier * clip)^2)`` drawn from the OS CSPRNG
(:class:`userlayer.sdk.privacy.SecureRandom`, with the sum-of-four defence
against floating-point attacks), divided by ``batch_size``, then an Adam step.
An empty batch still takes a noise-only step. The base model never changes.

Nothing of the mechanism depends on the user's data: the sample rate ``q``,
the number of steps (``epochs / q``), the divisor ``batch_size`` and so the
noise multiplier are public constants of the configuration, the same for
every user. (With ``q = batch_size / N`` they would reveal the number of
examples, and so whether one event exists, through the manifest.) A user
with few events trains on small batches; one with none takes noise-only
steps and still gets an adapter.

Privacy unit: the event. The examples come with the number of examples one
event can change (``UserExamples.group``); the ledger charges for that many
by group privacy, so the epsilon in the record is per event. The budget is
reserved atomically before the first step (:meth:`PrivacyLedger.reserve`).

``TrainConfig.seed`` is a test hook: it makes the noise and the sampling
reproducible, which makes them subtractable, so the record of such a run says
``rng="seeded:<n> (not private)"`` and the registry refuses it where DP is
required.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import torch
from torch import Tensor

from userlayer.edge.examples import UserExamples
from userlayer.edge.exceptions import TrainingError
from userlayer.edge.privacy import PrivacyLedger
from userlayer.sdk.adapter import PrivacyRecord
from userlayer.sdk.exceptions import PrivacyError
from userlayer.sdk.model.config import AdapterConfig
from userlayer.sdk.model.transformer import Recommender, RowAdapters
from userlayer.sdk.privacy import DPRandom, Mechanism, dp_random, noise_multiplier

__all__ = [
    "PERSONAL",
    "DPConfig",
    "TrainConfig",
    "TrainResult",
    "per_example_grads",
    "train_adapter",
]

PERSONAL = ("prefix", "mode_prefix", "film_scale", "film_shift")


@dataclass(frozen=True)
class DPConfig:
    """Differential privacy of one training; validated on creation.

    Give ``noise_multiplier`` or ``target_epsilon`` (the epsilon this one
    training may spend; the noise is then solved for with the accountant).
    ``enabled=False`` trains without DP (for comparison; nothing is recorded).
    """

    enabled: bool = True
    clip: float = 1.0
    noise_multiplier: float | None = None
    target_epsilon: float | None = 2.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if self.clip <= 0:
            raise TrainingError(f"`clip` should be positive, got {self.clip}")
        if self.enabled and (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise TrainingError("give exactly one of `noise_multiplier` and `target_epsilon`")
        if self.noise_multiplier is not None and self.noise_multiplier <= 0:
            raise TrainingError(
                f"`noise_multiplier` should be positive, got {self.noise_multiplier}"
            )
        if self.target_epsilon is not None and self.target_epsilon <= 0:
            raise TrainingError(f"`target_epsilon` should be positive, got {self.target_epsilon}")
        if not 0 < self.delta < 1:
            raise TrainingError(f"`delta` should be in (0, 1), got {self.delta}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of one user's adapter; validated on creation."""

    epochs: float = 8.0  # expected passes over each example (steps = epochs / sample_rate)
    sample_rate: float = 0.1  # q: an example's chance per step (public, the same for all users)
    batch_size: int = 16  # divisor of the noisy sum (DP); the mini-batch size without DP
    lr: float = 5e-3
    max_steps: int = 400
    seed: int | None = None  # test hook only: a seeded run is NOT private
    dp: DPConfig = field(default_factory=DPConfig)
    # adapter tensors trained per user: the personal parts by default (profile prefix,
    # mode components, FiLM). Under DP-SGD fewer coordinates mean less noise per
    # coordinate; measured on the synthetic data (docs/edge.md) this beats training the
    # LoRA deltas too. None trains every tensor.
    trainable: tuple[str, ...] | None = PERSONAL

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size < 1 or self.max_steps < 1:
            raise TrainingError("`epochs`, `batch_size` and `max_steps` should be positive")
        if not 0 < self.sample_rate <= 1:
            raise TrainingError(f"`sample_rate` should be in (0, 1], got {self.sample_rate}")
        if not 0 < self.lr < 1:
            raise TrainingError(f"`lr` should be in (0, 1), got {self.lr}")

    def plan(self) -> tuple[float, int]:
        """Sample rate and number of steps: public constants, never the user's data."""
        q = self.sample_rate
        return q, max(1, min(self.max_steps, math.ceil(self.epochs / q)))


@dataclass
class TrainResult:
    """The trained adapter and what it cost."""

    adapter: dict[str, Tensor]
    losses: list[float]
    batch_sizes: list[int]
    steps: int
    seconds: float
    privacy: PrivacyRecord | None


def _per_row(t: Tensor, b: int) -> Tensor:
    """``t`` repeated for ``b`` rows: (b, *t.shape), each row its own copy."""
    return t.unsqueeze(0).repeat(b, *([1] * t.dim()))


def per_example_grads(
    model: Recommender,
    acfg: AdapterConfig,
    adapter: dict[str, Tensor],
    tokens: Tensor,
    ctx: Tensor,
    weights: Tensor,
    mode_weights: Tensor | None = None,
    names: tuple[str, ...] | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """Exact per-example gradients of the weighted target loss: (grads (b, ...), losses (b,)).

    Each row gets its own copy of the adapter, so one backward pass gives
    every row's gradient. Only the tensors in ``names`` (default: all) are
    differentiated; the others are copied without a gradient.
    """
    b = tokens.shape[0]
    rows = {
        n: _per_row(t.detach(), b).requires_grad_(names is None or n in names)
        for n, t in adapter.items()
    }
    ad = RowAdapters(acfg, torch.ones(b, dtype=torch.bool), rows, mode_weights)
    losses = model.loss(tokens, ctx, ad, reduction="none", last_item_only=True)
    (losses * weights).sum().backward()  # type: ignore[no-untyped-call]
    grads = {
        n: t.grad if t.grad is not None else torch.zeros_like(t)
        for n, t in rows.items()
        if t.requires_grad
    }
    return grads, losses.detach()


def batch_grads(
    model: Recommender,
    acfg: AdapterConfig,
    adapter: dict[str, Tensor],
    names: tuple[str, ...],
    tokens: Tensor,
    ctx: Tensor,
    weights: Tensor,
    mode_weights: Tensor | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """The batch-mean gradient (non-private training): (grads, losses (b,)).

    The same value as the mean of :func:`per_example_grads` at the cost of one
    ordinary backward pass: the baseline DP-SGD's overhead is measured against.
    """
    b = tokens.shape[0]
    leaves = {n: adapter[n].detach().clone().requires_grad_(True) for n in names}
    rows = {n: _per_row(leaves.get(n, t.detach()), b) for n, t in adapter.items()}
    ad = RowAdapters(acfg, torch.ones(b, dtype=torch.bool), rows, mode_weights)
    losses = model.loss(tokens, ctx, ad, reduction="none", last_item_only=True)
    ((losses * weights).sum() / b).backward()  # type: ignore[no-untyped-call]
    grads = {n: t.grad if t.grad is not None else torch.zeros_like(t) for n, t in leaves.items()}
    return grads, losses.detach()


def train_adapter(
    model: Recommender,
    acfg: AdapterConfig,
    examples: UserExamples,
    init: dict[str, Tensor],
    cfg: TrainConfig | None = None,
    ledger: PrivacyLedger | None = None,
    user_id: str = "",
    now: datetime | None = None,
    trainable: tuple[str, ...] | None = None,
) -> TrainResult:
    """Train a user's adapter from ``init`` on their examples; the base stays frozen.

    With DP the noise is solved for the target epsilon (per event: the
    examples' group size is charged), the budget is checked and the training
    reserved in ``ledger`` in one transaction (``BudgetExceededError`` and
    nothing recorded when it does not fit), and the reservation is committed
    when training finished (released if it failed).

    Args:
        model: the frozen base (put in eval mode here; its weights never change).
        acfg: the adapter's configuration.
        examples: the user's examples (:func:`userlayer.edge.examples.user_examples`).
        init: the starting adapter (e.g. the shared initialisation of a round).
        cfg: optimisation and DP settings.
        ledger: the privacy ledger (required with DP).
        user_id: whose ledger entry this is.
        now: the ledger time (default: now).
        trainable: names of the tensors to train (default: all).

    Raises:
        TrainingError: bad settings, no examples without DP, or a target epsilon no noise
            reaches; BudgetExceededError: over budget.
    """
    cfg = cfg or TrainConfig()
    dp = cfg.dp
    n = len(examples)
    if n == 0 and not dp.enabled:
        raise TrainingError("no examples to train on")
    q, steps = cfg.plan()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = trainable if trainable is not None else cfg.trainable
    names = tuple(init) if trainable is None else tuple(k for k in trainable if k in init)
    known = (*PERSONAL, "lora_a.", "lora_b.")
    unknown = sorted(k for k in (trainable or ()) if not k.startswith(known))
    if unknown:
        raise TrainingError(f"{unknown} are not adapter tensor names")
    if not names:
        raise TrainingError(f"none of the trainable tensors {trainable} is in this adapter")
    if not dp.enabled:  # the comparison: `epochs` passes over this user's examples
        steps = max(1, min(cfg.max_steps, math.ceil(cfg.epochs * n / cfg.batch_size)))
        t0 = time.perf_counter()
        out, losses, sizes = _train_plain(model, acfg, examples, init, names, cfg, steps)
        return TrainResult(out, losses, sizes, steps, time.perf_counter() - t0, None)
    rng = dp_random(cfg.seed)
    if ledger is None:
        raise TrainingError("DP training needs a privacy ledger")
    try:
        noise = (
            dp.noise_multiplier
            if dp.noise_multiplier is not None
            else noise_multiplier(
                float(dp.target_epsilon or 0),
                ledger.delta,
                q,
                steps,
                ledger.accountant,
                examples.group,
            )
        )
        mech = Mechanism(noise, q, steps)
    except PrivacyError as e:
        raise TrainingError(str(e)) from e
    t0 = time.perf_counter()
    with ledger.reserve(user_id, mech, examples.group, now, rng.source) as reservation:
        out, losses, sizes = _train_dp(model, acfg, examples, init, names, cfg, mech, rng)
    entry = reservation.entry
    record = PrivacyRecord(
        epsilon=entry.epsilon_after,
        delta=ledger.delta,
        accountant=entry.accountant,
        library=entry.library,
        steps=steps,
        noise_multiplier=noise,
        sample_rate=q,
        clip=dp.clip,
        unit=examples.unit,
        examples_per_unit=examples.group,
        rng=rng.source,
    )
    return TrainResult(out, losses, sizes, steps, time.perf_counter() - t0, record)


def _leaves(init: dict[str, Tensor], names: tuple[str, ...]) -> dict[str, Tensor]:
    params = {k: v.detach().clone().float() for k, v in init.items()}
    for k in names:
        params[k].requires_grad_(True)
    return params


def _train_plain(
    model: Recommender,
    acfg: AdapterConfig,
    ex: UserExamples,
    init: dict[str, Tensor],
    names: tuple[str, ...],
    cfg: TrainConfig,
    steps: int,
) -> tuple[dict[str, Tensor], list[float], list[int]]:
    """Non-private training (the comparison): mini-batches without replacement."""
    params = _leaves(init, names)
    opt = torch.optim.Adam([params[k] for k in names], lr=cfg.lr)
    gen = torch.Generator().manual_seed(0 if cfg.seed is None else cfg.seed)
    losses: list[float] = []
    sizes: list[int] = []
    n = len(ex)
    for _ in range(steps):
        idx = torch.randperm(n, generator=gen)[: cfg.batch_size]
        sizes.append(len(idx))
        batch = (ex.tokens[idx], ex.ctx[idx], ex.weights[idx], ex.mode_weights[idx])
        mean, batch_losses = batch_grads(model, acfg, params, names, *batch)
        losses.append(float(batch_losses.mean()))
        for k in names:
            params[k].grad = mean[k]
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {k: v.detach().clone() for k, v in params.items()}, losses, sizes


def _train_dp(
    model: Recommender,
    acfg: AdapterConfig,
    ex: UserExamples,
    init: dict[str, Tensor],
    names: tuple[str, ...],
    cfg: TrainConfig,
    mech: Mechanism,
    rng: DPRandom,
) -> tuple[dict[str, Tensor], list[float], list[int]]:
    """DP-SGD (see the module docstring): Poisson batches, Opacus' DPOptimizer, OS noise."""
    params = _leaves(init, names)
    n = len(ex)
    opt = _dp_optimizer(
        torch.optim.Adam([params[k] for k in names], lr=cfg.lr),
        mech.noise_multiplier,
        cfg.dp.clip,
        cfg.batch_size,  # public: never the data-dependent q * n
        rng,
    )
    losses: list[float] = []
    sizes: list[int] = []
    for _ in range(mech.steps):
        idx = torch.from_numpy(np.flatnonzero(rng.uniform(n) < mech.sample_rate))
        sizes.append(len(idx))
        if len(idx):
            batch = (ex.tokens[idx], ex.ctx[idx], ex.weights[idx], ex.mode_weights[idx])
            grads, batch_losses = per_example_grads(model, acfg, params, *batch, names=names)
            losses.append(float(batch_losses.mean()))
        else:
            grads = {k: torch.zeros((0, *params[k].shape)) for k in names}
        for k in names:
            params[k].grad_sample = grads[k]  # type: ignore[attr-defined]
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {k: v.detach().clone() for k, v in params.items()}, losses, sizes


def _dp_optimizer(
    optimizer: torch.optim.Optimizer,
    noise: float,
    clip: float,
    expected_batch_size: float,
    rng: DPRandom,
) -> Any:
    """Opacus' DPOptimizer whose Gaussian noise comes from ``rng`` (the OS CSPRNG)."""
    from opacus.optimizers import DPOptimizer
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    class _OsNoiseDPOptimizer(DPOptimizer):  # type: ignore[misc]
        def add_noise(self) -> None:
            for p in self.params:
                _check_processed_flag(p.summed_grad)
                std = self.noise_multiplier * self.max_grad_norm
                z = rng.gaussian(tuple(p.summed_grad.shape), std)
                p.grad = (p.summed_grad + torch.from_numpy(z).to(p.summed_grad.dtype)).view_as(p)
                _mark_as_processed(p.summed_grad)

    return _OsNoiseDPOptimizer(
        optimizer,
        noise_multiplier=noise,
        max_grad_norm=clip,
        expected_batch_size=expected_batch_size,
        loss_reduction="mean",
    )
