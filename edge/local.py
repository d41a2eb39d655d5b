"""One user's local training, from decrypted events to signed packages.

Shared by the Flower ClientApp and :class:`~userlayer.edge.node.EdgeNode`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from userlayer.edge.examples import ExampleConfig, user_examples
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
    """How one user's adapter is trained where their data lives."""

    epochs: float = 8.0
    lr: float = 5e-3
    batch_size: int = 16
    epsilon: float = 2.0  # DP-SGD target epsilon of this training
    holdout: int = 0  # events kept out (evaluation); 0 in production
    seed: int = 0


@dataclass
class LocalResult:
    """A trained adapter, its DP record and one signed package per service."""

    adapter: dict[str, torch.Tensor]
    privacy: PrivacyRecord
    packages: dict[str, bytes]
    metrics: dict[str, float] = field(default_factory=dict)


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
) -> LocalResult:
    """Build the user's examples, train with DP-SGD (budget checked first), sign per service.

    Raises:
        TrainingError: no usable examples; BudgetExceededError: over the privacy budget.
    """
    t0 = time.perf_counter()
    profile = build_profile(events, now=now, categories=categories)
    ex = user_examples(
        profile,
        table,
        model.ctx_vocab,
        ExampleConfig(holdout=cfg.holdout),
        detector,
        categories,
    )
    tcfg = TrainConfig(
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        dp=DPConfig(target_epsilon=cfg.epsilon),
    )
    res = train_adapter(model, acfg, ex, dict(init), tcfg, ledger, user_id, now)
    assert res.privacy is not None
    fields = {
        "base_fingerprint": fingerprint,
        "adapter_config": acfg.to_dict(),
        "user_id": user_id,
        "version": version,
        "privacy": res.privacy,
    }
    tensors = {k: v.numpy() for k, v in res.adapter.items()}
    services = sorted({e.service.value for e in profile.events})
    packages = {s: seal_package({**fields, "service": s}, tensors, key) for s in services}
    tail = res.losses[-10:]
    metrics = {
        "loss": float(sum(tail) / max(len(tail), 1)),
        "epsilon_user": res.privacy.epsilon,
        "examples": float(len(ex)),
        "seconds": time.perf_counter() - t0,
    }
    return LocalResult(res.adapter, res.privacy, packages, metrics)
