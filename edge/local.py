"""One user's local training, from decrypted events to signed packages.

Shared by the Flower ClientApp and :class:`~userlayer.edge.node.EdgeNode`.
The training clock (``now``) is the wall clock unless the caller gives one
(a simulation's clock): time-decay weights and the data horizon are measured
against it, never against one of the user's own events, so that one event
cannot change the weights of the others.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from userlayer.edge.consent import Consent
from userlayer.edge.examples import PROMPTS, ExampleConfig, user_examples
from userlayer.edge.exceptions import TrainingError
from userlayer.edge.privacy import PrivacyLedger
from userlayer.edge.profile import ModeDetector, build_profile
from userlayer.edge.training import DPConfig, TrainConfig, train_adapter
from userlayer.sdk.adapter import PrivacyRecord, seal_package
from userlayer.sdk.model.config import AdapterConfig
from userlayer.sdk.model.transformer import Recommender
from userlayer.sdk.schemas import Event
from userlayer.sdk.semantic_ids import SemanticIdTable

__all__ = ["LocalResult", "LocalTrainConfig", "train_and_seal"]


@dataclass(frozen=True)
class LocalTrainConfig:
    """How one user's adapter is trained where their data lives; validated on creation."""

    epochs: float = 8.0
    lr: float = 5e-3
    batch_size: int = 16
    epsilon: float = 2.0  # DP-SGD target epsilon of this training, per event
    holdout: int = 0  # events kept out (evaluation); 0 in production
    prompt: str = "event"  # see userlayer.edge.examples
    seed: int | None = None  # test hook only: a seeded run is NOT private

    def __post_init__(self) -> None:
        if self.prompt not in PROMPTS:
            raise TrainingError(f"`prompt` should be one of {PROMPTS}, got {self.prompt!r}")
        if not self.epsilon > 0:
            raise TrainingError(f"`epsilon` should be positive, got {self.epsilon}")


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
) -> LocalResult:
    """Build the user's examples, train with DP-SGD (budget reserved first), sign per service.

    One adapter is trained per group of services that share their allowed
    sources under ``consent`` (one group by default), each only on the events
    of those sources, and sealed for each service of the group that the user
    has events in. Every training is charged to the user's ledger.

    Raises:
        TrainingError: no usable examples; BudgetExceededError: over the privacy budget
            (trainings of earlier groups stay recorded).
    """
    t0 = time.perf_counter()
    now = now or datetime.now(UTC)
    consent = consent or Consent()
    targets = sorted({e.service.value for e in events})
    groups = consent.groups(targets)
    if not groups:
        raise TrainingError(f"user {user_id!r}: consent allows no service's adapter")
    tcfg = TrainConfig(
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        dp=DPConfig(target_epsilon=cfg.epsilon),
    )
    packages: dict[str, bytes] = {}
    adapters: dict[str, dict[str, torch.Tensor]] = {}
    first: dict[str, torch.Tensor] | None = None
    record: PrivacyRecord | None = None
    losses: list[float] = []
    n_examples = 0
    for sources, services in groups:
        allowed = [e for e in events if e.service.value in sources]
        profile = build_profile(allowed, now=now, categories=categories)
        ex = user_examples(
            profile,
            table,
            model.ctx_vocab,
            ExampleConfig(holdout=cfg.holdout, prompt=cfg.prompt),
            detector,
            categories,
        )
        res = train_adapter(model, acfg, ex, dict(init), tcfg, ledger, user_id, now)
        assert res.privacy is not None
        record = res.privacy
        first = first if first is not None else res.adapter
        losses.extend(res.losses[-10:])
        n_examples += len(ex)
        fields = {
            "base_fingerprint": fingerprint,
            "adapter_config": acfg.to_dict(),
            "user_id": user_id,
            "version": version,
            "privacy": res.privacy,
        }
        tensors = {k: v.numpy() for k, v in res.adapter.items()}
        for s in services:
            packages[s] = seal_package({**fields, "service": s}, tensors, key)
            adapters[s] = res.adapter
    assert first is not None
    assert record is not None
    metrics = {
        "loss": float(sum(losses) / max(len(losses), 1)),
        "epsilon_user": record.epsilon,
        "examples": float(n_examples),
        "trainings": float(len(groups)),
        "seconds": time.perf_counter() - t0,
    }
    return LocalResult(first, record, packages, metrics, adapters)
