"""One user's local training, from decrypted events to signed packages.

Shared by the Flower ClientApp and :class:`~userlayer.edge.node.EdgeNode`.
The training clock (``now``) is the wall clock unless the caller gives one
(a simulation's clock): time-decay weights and the data horizon are measured
against it, never against one of the user's own events, so that one event
cannot change the weights of the others. The data horizon is the ledger's
period (events strictly newer than ``now - period_days``), so every training
that saw an event is inside one accounting window.

What is released does not depend on the user's events beyond the DP
adapter tensors: the services packaged are the caller's (the services the
user is a customer of, which their backend knows), filtered by consent, not
those the user happens to have events in; a group without events still gets
a (noise-only) adapter; and the metrics returned for the cloud are only the
epsilon (the loss and the example count stay local).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from userlayer.edge.consent import Consent
from userlayer.edge.encoder import ProfileRelease, release_profile
from userlayer.edge.examples import PROMPTS, ExampleConfig, user_examples
from userlayer.edge.exceptions import TrainingError
from userlayer.edge.privacy import PrivacyLedger
from userlayer.edge.profile import ModeDetector, Profile, ProfileConfig, build_profile
from userlayer.edge.training import DPConfig, TrainConfig, train_adapter
from userlayer.sdk.adapter import MAX_FAVOURITES, PrivacyRecord, seal_package
from userlayer.sdk.exceptions import PrivacyError
from userlayer.sdk.model.config import AdapterConfig
from userlayer.sdk.model.transformer import Recommender
from userlayer.sdk.privacy import Mechanism, noise_multiplier
from userlayer.sdk.privacy.favourites import FavouritesConfig
from userlayer.sdk.schemas import Event, Service
from userlayer.sdk.semantic_ids import SemanticIdTable

__all__ = ["ALL_SERVICES", "WAYS", "LocalResult", "LocalTrainConfig", "train_and_seal"]

ALL_SERVICES = tuple(s.value for s in Service)
WAYS = ("auto", "dp-sgd", "profile", "both")


@dataclass(frozen=True)
class LocalTrainConfig:
    """How one user's adapter is trained where their data lives; validated on creation."""

    epochs: float = 8.0
    lr: float = 5e-3
    batch_size: int = 16
    epsilon: float = 2.0  # DP-SGD target epsilon of this training, per event
    sample_rate: float = 0.1  # public: the same for every user (see userlayer.edge.training)
    holdout: int = 0  # events kept out (evaluation); 0 in production
    prompt: str = "event"  # see userlayer.edge.examples
    seed: int | None = None  # test hook only: a seeded run is NOT private
    # how the layer is made (DESIGN.md, docs/personalization.md): "dp-sgd" (a),
    # "profile" (b: the encoder's Gaussian release, userlayer.edge.encoder), "both"
    # (the release at `profile_share` of the epsilon, then DP-SGD from it at the
    # rest), "auto" (profile when the base has an encoder, else dp-sgd)
    way: str = "auto"
    profile_share: float = 0.5
    # favourite items the profile release also carries (userlayer.sdk.privacy.favourites;
    # ways "profile" and "both"); 0: none
    favourites: int = 10

    def __post_init__(self) -> None:
        if self.prompt not in PROMPTS:
            raise TrainingError(f"`prompt` should be one of {PROMPTS}, got {self.prompt!r}")
        if not self.epsilon > 0:
            raise TrainingError(f"`epsilon` should be positive, got {self.epsilon}")
        if self.way not in WAYS:
            raise TrainingError(f"`way` should be one of {WAYS}, got {self.way!r}")
        if not 0 < self.profile_share < 1:
            raise TrainingError(f"`profile_share` should be in (0, 1), got {self.profile_share}")
        if not 0 <= self.favourites <= MAX_FAVOURITES:
            raise TrainingError(
                f"`favourites` should be in [0, {MAX_FAVOURITES}], got {self.favourites}"
            )


@dataclass
class LocalResult:
    """Trained adapters, the last DP record and one signed package per service.

    ``adapter`` is the adapter of the largest consent group (every service by
    default); ``adapters`` maps each packaged service to the adapter sealed for it.
    """

    adapter: dict[str, torch.Tensor]
    privacy: PrivacyRecord
    packages: dict[str, bytes]
    metrics: dict[str, float] = field(default_factory=dict)
    adapters: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    local: dict[str, float] = field(default_factory=dict)


@dataclass
class _Layer:
    adapter: dict[str, torch.Tensor]
    privacy: PrivacyRecord
    losses: list[float]
    examples: int
    favourites: tuple[str, ...] = ()


def _make_layer(
    model: Recommender,
    table: SemanticIdTable,
    acfg: AdapterConfig,
    events: Sequence[Event],
    profile: Profile,
    init: Mapping[str, torch.Tensor],
    cfg: LocalTrainConfig,
    tcfg: TrainConfig,
    ledger: PrivacyLedger,
    user_id: str,
    now: datetime,
    detector: ModeDetector | None,
    categories: Mapping[str, Sequence[str]] | None,
) -> _Layer:
    """One consent group's layer, made the configured way and charged to the ledger."""
    start = dict(init)
    way = cfg.way
    if way == "auto":
        way = "profile" if model.profile is not None else "dp-sgd"
    seen = events[: len(events) - cfg.holdout]
    favs = FavouritesConfig(k=cfg.favourites) if cfg.favourites else None
    if way == "profile":  # no examples needed: the release is the whole layer
        only = release_profile(
            model, acfg, table, seen, cfg.epsilon, ledger, user_id, start, now, cfg.seed, favs
        )
        return _Layer(only.adapter, only.record, [], only.events, only.favourites)
    ex = user_examples(
        profile,
        table,
        model.ctx_vocab,
        ExampleConfig(holdout=cfg.holdout, prompt=cfg.prompt),
        detector,
        categories,
        allow_empty=True,
    )
    rel: ProfileRelease | None = None
    if way == "both":  # both releases checked together before the first is reserved
        share = cfg.profile_share
        tcfg = replace(tcfg, dp=DPConfig(target_epsilon=cfg.epsilon * (1 - share)))
        _check_both(ledger, user_id, cfg.epsilon * share, tcfg, ex.group, now)
        rel = release_profile(
            model,
            acfg,
            table,
            seen,
            cfg.epsilon * share,
            ledger,
            user_id,
            start,
            now,
            cfg.seed,
            favs,
        )
        start = rel.adapter
    res = train_adapter(model, acfg, ex, start, tcfg, ledger, user_id, now)
    assert res.privacy is not None
    if rel is None:
        return _Layer(res.adapter, res.privacy, res.losses, len(ex))
    record = replace(
        res.privacy,
        mechanism="profile+dp-sgd",
        profile_noise_multiplier=rel.record.noise_multiplier,
        favourites_noise=rel.record.favourites_noise,
    )
    return _Layer(res.adapter, record, res.losses, len(ex), rel.favourites)


def _check_both(
    ledger: PrivacyLedger,
    user_id: str,
    profile_epsilon: float,
    tcfg: TrainConfig,
    group: int,
    now: datetime,
) -> None:
    """Refuse (BudgetExceededError) before spending anything if the two releases do not fit."""
    q, steps = tcfg.plan()
    try:
        z_p = noise_multiplier(profile_epsilon, ledger.delta, 1.0, 1, ledger.accountant)
        target = float(tcfg.dp.target_epsilon or 0)
        z_s = noise_multiplier(target, ledger.delta, q, steps, ledger.accountant, group)
        planned = [(Mechanism(z_p, 1.0, 1), 1), (Mechanism(z_s, q, steps), group)]
    except PrivacyError as e:
        raise TrainingError(str(e)) from e
    ledger.check(user_id, planned, now)


def train_and_seal(
    model: Recommender,
    table: SemanticIdTable,
    acfg: AdapterConfig,
    events: Sequence[Event],
    init: Mapping[str, torch.Tensor],
    cfg: LocalTrainConfig,
    ledger: PrivacyLedger,
    user_id: str,
    version: int,
    fingerprint: str,
    key: Ed25519PrivateKey,
    detector: ModeDetector | None = None,
    categories: Mapping[str, Sequence[str]] | None = None,
    now: datetime | None = None,
    consent: Consent | None = None,
    services: tuple[str, ...] = ALL_SERVICES,
) -> LocalResult:
    """Build the user's examples, train with DP-SGD (budget reserved first), sign per service.

    One adapter is trained per group of ``services`` that share their allowed
    sources under ``consent`` (one group by default), each only on the events
    of those sources, and sealed for each service of the group. Every training
    is charged to the user's ledger.

    Raises:
        TrainingError: consent allows no service; BudgetExceededError: over the privacy
            budget (trainings of earlier groups stay recorded).
    """
    t0 = time.perf_counter()
    now = now or datetime.now(UTC)
    consent = consent or Consent()
    groups = consent.groups(services)
    if not groups:
        raise TrainingError(f"user {user_id!r}: consent allows no service's adapter")
    tcfg = TrainConfig(
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        sample_rate=cfg.sample_rate,
        seed=cfg.seed,
        dp=DPConfig(target_epsilon=cfg.epsilon),
    )
    packages: dict[str, bytes] = {}
    adapters: dict[str, dict[str, torch.Tensor]] = {}
    first: dict[str, torch.Tensor] | None = None
    record: PrivacyRecord | None = None
    losses: list[float] = []
    n_examples = 0
    for sources, targets in groups:
        allowed = [e for e in events if e.service.value in sources]
        horizon = ProfileConfig(
            short_term_days=min(7.0, ledger.period_days), long_term_days=ledger.period_days
        )
        profile = build_profile(allowed, now=now, config=horizon, categories=categories)
        res = _make_layer(
            model,
            table,
            acfg,
            allowed,
            profile,
            init,
            cfg,
            tcfg,
            ledger,
            user_id,
            now,
            detector,
            categories,
        )
        record = res.privacy
        first = first if first is not None else res.adapter
        losses.extend(res.losses[-10:])
        n_examples += res.examples
        fields = {
            "base_fingerprint": fingerprint,
            "adapter_config": acfg.to_dict(),
            "user_id": user_id,
            "version": version,
            "privacy": record,
            "favourites": res.favourites,
        }
        tensors = {k: v.numpy() for k, v in res.adapter.items()}
        for s in targets:
            packages[s] = seal_package({**fields, "service": s}, tensors, key)
            adapters[s] = res.adapter
    assert first is not None
    assert record is not None
    local = {
        "loss": float(sum(losses) / max(len(losses), 1)),
        "examples": float(n_examples),
        "trainings": float(len(groups)),
        "seconds": time.perf_counter() - t0,
    }
    return LocalResult(first, record, packages, {"epsilon_user": record.epsilon}, adapters, local)
