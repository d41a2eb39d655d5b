"""Privacy audit of personal adapters: membership inference and a noise-replay attack.

The game (canary auditing after Jagielski et al. 2020 and Nasr et al. 2021),
for the privacy unit the product claims, the *event*: for each audited user
two canary items are drawn that the user never touched. One of them is
inserted into the user's history as one purchase, either as the latest event
(``position="last"``) or in the middle of the history (``"middle"``: with
session prompts it then sits in several later examples' prompts, which the
accounting must charge); the other is never inserted. The user's adapter is
trained on the history at each audited epsilon and without DP.

Two attacks see the released adapter and the public base model:

- **Membership inference** (LiRA-style, the base as reference): how much the
  adapter lowers the candidate's loss at the canary's slot compared with the
  base, minus the median of the same drop over reference items. Reported: the
  AUC, the highest AUC the reported epsilon allows, and an empirical lower
  bound on epsilon: the threshold is chosen on one half of the users and the
  rates measured on the other half, with Clopper-Pearson intervals (95%), so
  ``log((TPR_low - delta) / FPR_high)`` (and its mirror) is a valid lower
  bound with 95% confidence. A correct mechanism keeps it below the reported
  epsilon; without DP it shows how much the adapter leaks.
- **Noise replay**: an attacker who reads the code, knows the public config
  and every other event of the user replays the training with each candidate
  inserted, with the randomness the code would use if it were predictable
  (the seed of the config: ``replay_seed``), and scores a candidate by minus
  the distance between the released adapter and its replay. If the noise were
  predictable the member's replay would equal the release exactly (AUC 1).
  With the OS CSPRNG it cannot be replayed. ``train_seed`` sets the DP test
  hook on the audited trainings (a seeded, NOT private run) to show the
  attack succeeds there.
"""

from __future__ import annotations

import logging
import math
import secrets
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

from userlayer.edge.examples import (
    ExampleConfig,
    UserExamples,
    encode_prompt,
    mode_weights,
    session_before,
    user_examples,
)
from userlayer.edge.privacy import PrivacyLedger
from userlayer.edge.profile import build_profile
from userlayer.edge.training import PERSONAL, DPConfig, TrainConfig, TrainResult, train_adapter
from userlayer.sdk.model.config import AdapterConfig
from userlayer.sdk.model.io import load_model
from userlayer.sdk.model.prompt import pack_prompts
from userlayer.sdk.model.transformer import Recommender, RowAdapters, new_adapter
from userlayer.sdk.schemas import Event
from userlayer.sdk.semantic_ids import SemanticIdTable
from userlayer.tools.data.format import Dataset
from userlayer.tools.exceptions import ToolsError

__all__ = ["AuditConfig", "auc", "audit_membership", "epsilon_lower_bound", "max_auc"]


POSITIONS = ("last", "middle")


@dataclass(frozen=True)
class AuditConfig:
    """One audit run; validated on creation. ``None`` in ``epsilons`` is training without DP."""

    users: int = 64
    epsilons: tuple[float | None, ...] = (None, 8.0, 2.0, 1.0)
    positions: tuple[str, ...] = POSITIONS
    prompt: str = "event"  # the training view audited (userlayer.edge.examples)
    replay_users: int = 16  # users the noise-replay attack is run on (two trainings each)
    replay_seed: int = 0  # the seed an attacker assumes (the public config's)
    train_seed: int | None = None  # test hook: seed the audited trainings (NOT private)
    epochs: float = 8.0
    lr: float = 5e-3
    batch_size: int = 16
    trainable: tuple[str, ...] | None = PERSONAL
    references: int = 32
    min_events: int = 5
    history: int | None = None  # audit on each user's last `history` events (None: all)
    delta: float = 1e-5
    confidence: float = 0.95
    seed: int = 0
    adapter: AdapterConfig = field(default_factory=AdapterConfig)

    def __post_init__(self) -> None:
        if self.users < 4:
            raise ToolsError(f"`users` should be at least 4, got {self.users}")
        if not self.epsilons:
            raise ToolsError("`epsilons` should name at least one setting")
        if any(e is not None and e <= 0 for e in self.epsilons):
            raise ToolsError(f"every epsilon should be positive, got {self.epsilons}")
        if self.references < 1 or self.min_events < 3:
            raise ToolsError("`references` should be >= 1 and `min_events` >= 3")
        if self.history is not None and self.history < self.min_events:
            raise ToolsError("`history` should be at least `min_events`")
        if not 0 < self.confidence < 1:
            raise ToolsError(f"`confidence` should be in (0, 1), got {self.confidence}")
        if not self.positions or any(p not in POSITIONS for p in self.positions):
            raise ToolsError(f"`positions` should name some of {POSITIONS}, got {self.positions}")
        if self.replay_users < 0:
            raise ToolsError(f"`replay_users` should be >= 0, got {self.replay_users}")


def auc(members: Sequence[float], others: Sequence[float]) -> float:
    """Area under the ROC curve: P(member score > non-member score), ties count half."""
    a, b = np.asarray(members, float), np.asarray(others, float)
    if not len(a) or not len(b):
        raise ToolsError("AUC needs scores of members and of non-members")
    greater = (a[:, None] > b[None, :]).sum()
    ties = (a[:, None] == b[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(a) * len(b)))


def max_auc(epsilon: float, delta: float) -> float:
    """The highest AUC any attack can reach on an (epsilon, delta)-DP mechanism.

    The area under the largest true-positive rate DP allows at each false-positive
    rate x: ``min(1, e^eps x + delta, 1 - e^-eps (1 - delta - x))``.
    """
    x = np.linspace(0.0, 1.0, 20_001)
    e = math.exp(epsilon)
    tpr = np.minimum.reduce([np.ones_like(x), e * x + delta, 1 - (1 - delta - x) / e])
    return float(np.trapezoid(np.clip(tpr, 0, 1), x))


def _cp(k: int, n: int, alpha: float) -> tuple[float, float]:
    """Clopper-Pearson interval of a binomial proportion (two-sided, level 1 - alpha)."""
    from scipy.stats import beta

    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def _eps_at(tp: int, fp: int, n_in: int, n_out: int, delta: float, alpha: float) -> float:
    """Epsilon lower bound of one threshold's confusion counts (both directions)."""
    tpr_lo, _tpr_hi = _cp(tp, n_in, alpha)
    _fpr_lo, fpr_hi = _cp(fp, n_out, alpha)
    best = 0.0
    if tpr_lo - delta > 0 and fpr_hi > 0:
        best = max(best, math.log((tpr_lo - delta) / fpr_hi))
    if (1 - fpr_hi) - delta > 0 and (1 - tpr_lo) > 0:
        best = max(best, math.log((1 - fpr_hi - delta) / (1 - tpr_lo)))
    return best


def epsilon_lower_bound(
    members: Sequence[float],
    others: Sequence[float],
    delta: float,
    confidence: float = 0.95,
    seed: int = 0,
) -> float:
    """Empirical epsilon lower bound of a threshold attack (threshold chosen on a held-out half)."""
    a, b = np.asarray(members, float), np.asarray(others, float)
    if len(a) < 2 or len(b) < 2:
        raise ToolsError("the bound needs at least two members and two non-members")
    rng = np.random.default_rng(seed)
    a, b = a[rng.permutation(len(a))], b[rng.permutation(len(b))]
    a_fit, a_test = a[: len(a) // 2], a[len(a) // 2 :]
    b_fit, b_test = b[: len(b) // 2], b[len(b) // 2 :]
    alpha = 1 - confidence

    def eps(t: float, xa: np.ndarray, xb: np.ndarray) -> float:
        return _eps_at(int((xa > t).sum()), int((xb > t).sum()), len(xa), len(xb), delta, alpha)

    cands = np.unique(np.concatenate([a_fit, b_fit]))
    thresholds = [float(cands[0]) - 1.0, *(float(x) for x in cands)]
    best = max(thresholds, key=lambda t: eps(t, a_fit, b_fit))
    return eps(best, a_test, b_test)


@dataclass(frozen=True)
class _Trial:
    user: str
    events: list[Event]  # the history with the member canary at `slot`
    slot: int
    member: str
    other: str
    references: list[str]

    def with_item(self, item: str) -> list[Event]:
        """The history with ``item`` in the canary's slot."""
        ev = self.events[self.slot].model_copy(update={"item_id": item})
        return [*self.events[: self.slot], ev, *self.events[self.slot + 1 :]]

    @property
    def clock(self) -> datetime:
        """The audit's training clock: after every event, the same with or without the canary."""
        return max(e.timestamp for e in self.events) + timedelta(days=1)


def _trials(ds: Dataset, table: SemanticIdTable, cfg: AuditConfig, position: str) -> list[_Trial]:
    rng = np.random.default_rng(cfg.seed)
    by_user = ds.user_events()
    eligible = sorted(
        u
        for u, ev in by_user.items()
        if sum(e.item_id in table.codes for e in ev) >= cfg.min_events
    )
    if len(eligible) < cfg.users:
        raise ToolsError(f"only {len(eligible)} users with {cfg.min_events}+ known events")
    users = sorted(eligible[int(i)] for i in rng.permutation(len(eligible))[: cfg.users])
    by_service: dict[str, list[str]] = {}
    for item, svc in sorted(table.services.items()):
        by_service.setdefault(svc.value, []).append(item)
    out = []
    for u in users:
        evs = sorted(by_user[u], key=lambda e: e.timestamp)[-(cfg.history or 0) :]
        i = len(evs) - 1 if position == "last" else len(evs) // 2
        at = evs[i]
        seen = {e.item_id for e in evs}
        pool = [x for x in by_service[at.service.value] if x not in seen]
        if len(pool) < 2 + cfg.references:
            raise ToolsError(f"service {at.service.value} has too few items for canaries")
        pick = [pool[int(j)] for j in rng.permutation(len(pool))[: 2 + cfg.references]]
        # just after event i: the last event, or one in the middle of the history
        step = timedelta(days=1) if i + 1 == len(evs) else (evs[i + 1].timestamp - at.timestamp) / 2
        canary = at.model_copy(update={"item_id": pick[0], "timestamp": at.timestamp + step})
        out.append(
            _Trial(u, [*evs[: i + 1], canary, *evs[i + 1 :]], i + 1, pick[0], pick[1], pick[2:])
        )
    return out


def _slot_losses(
    model: Recommender,
    table: SemanticIdTable,
    acfg: AdapterConfig,
    trial: _Trial,
    adapter: dict[str, torch.Tensor] | None,
    prompt: str,
) -> np.ndarray:
    """Loss of each candidate (member, other, references) at the canary's slot."""
    evs, i = trial.events, trial.slot
    slot = evs[i]
    before = session_before(evs, i, ExampleConfig(prompt=prompt)) if prompt == "session" else []
    cands = [trial.member, trial.other, *trial.references]
    rows = [encode_prompt(before, slot, table, model.ctx_vocab, c) for c in cands]
    tok, ctx = pack_prompts(rows, len(model.ctx_vocab.sizes))
    ad = None
    if adapter is not None:
        b = len(rows)
        upto = evs[:i] if prompt == "session" else []
        mw = torch.tensor([mode_weights(slot, upto, None, None)] * b, dtype=torch.float32)
        per_row = {k: v.unsqueeze(0).expand(b, *v.shape) for k, v in adapter.items()}
        ad = RowAdapters(acfg, torch.ones(b, dtype=torch.bool), per_row, mw)
    with torch.no_grad():
        losses = model.loss(tok, ctx, ad, reduction="none", last_item_only=True)
    return losses.numpy().astype(np.float64)


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(((a[k] - b[k]).double() ** 2).sum()) for k in a))


def audit_membership(
    data_dir: str | Path,
    model_dir: str | Path,
    cfg: AuditConfig,
    on_user: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the audit; returns per-setting and per-position AUCs and epsilons."""
    torch.set_flush_denormal(True)
    model = load_model(model_dir)
    model.eval()
    table = SemanticIdTable.load(Path(model_dir) / "sids.json")
    ds = Dataset.load(data_dir)
    init = new_adapter(model.cfg, cfg.adapter, torch.Generator().manual_seed(cfg.seed))
    ecfg = ExampleConfig(prompt=cfg.prompt)
    trials = {p: _trials(ds, table, cfg, p) for p in cfg.positions}
    n_replay = min(cfg.replay_users, cfg.users)
    total = len(cfg.epsilons) * len(cfg.positions) * (cfg.users + 2 * n_replay)
    done = 0

    def examples(t: _Trial, events: list[Event]) -> UserExamples:
        return user_examples(build_profile(events, now=t.clock), table, model.ctx_vocab, ecfg)

    def train(
        t: _Trial, ex: UserExamples, eps: float | None, seed: int | None, ledger: PrivacyLedger
    ) -> TrainResult:
        nonlocal done
        dp = DPConfig(enabled=eps is not None, target_epsilon=eps, delta=cfg.delta)
        tcfg = TrainConfig(
            epochs=cfg.epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            seed=seed,
            dp=dp,
            trainable=cfg.trainable,
        )
        res = train_adapter(model, cfg.adapter, ex, init, tcfg, ledger, t.user, t.clock)
        done += 1
        if on_user:
            on_user(t.user, done, total)
        return res

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for s, eps in enumerate(cfg.epsilons):
            for position in cfg.positions:
                ledger = PrivacyLedger(
                    Path(tmp) / f"ledger-{s}-{position}.db",
                    secrets.token_bytes(32),
                    budget=1e9,
                    delta=cfg.delta,
                )
                members: list[float] = []
                others: list[float] = []
                reported: list[float] = []
                replay_in: list[float] = []
                replay_out: list[float] = []
                exact = 0
                for k, t in enumerate(trials[position]):
                    res = train(t, examples(t, t.events), eps, cfg.train_seed, ledger)
                    if res.privacy is not None:
                        reported.append(res.privacy.epsilon)
                    base = _slot_losses(model, table, cfg.adapter, t, None, cfg.prompt)
                    drop = base - _slot_losses(
                        model, table, cfg.adapter, t, res.adapter, cfg.prompt
                    )
                    shift = float(np.median(drop[2:]))
                    members.append(float(drop[0] - shift))
                    others.append(float(drop[1] - shift))
                    if k < n_replay:  # the attacker replays with the seed it assumes
                        seed = cfg.replay_seed if cfg.train_seed is None else cfg.train_seed
                        for item, out in ((t.member, replay_in), (t.other, replay_out)):
                            ex = examples(t, t.with_item(item))
                            with _quiet("userlayer.sdk.privacy.rng"):  # the attacker's seed
                                again = train(t, ex, eps, seed, ledger)
                            out.append(-_distance(res.adapter, again.adapter))
                        exact += replay_in[-1] == 0.0
                ledger.close()
                results.append(
                    {
                        "epsilon": eps,
                        "position": position,
                        "reported_epsilon_max": max(reported) if reported else None,
                        "auc": auc(members, others),
                        "auc_max_allowed": None if eps is None else max_auc(eps, cfg.delta),
                        "empirical_epsilon_lb": epsilon_lower_bound(
                            members, others, cfg.delta, cfg.confidence, cfg.seed
                        ),
                        "member_score_median": float(np.median(members)),
                        "other_score_median": float(np.median(others)),
                        "replay_auc": auc(replay_in, replay_out) if n_replay else None,
                        "replay_exact": exact,
                        "replay_users": n_replay,
                    }
                )
    return {
        "users": cfg.users,
        "unit": "event",
        "prompt": cfg.prompt,
        "delta": cfg.delta,
        "confidence": cfg.confidence,
        "rng": "os-csprng" if cfg.train_seed is None else f"seeded:{cfg.train_seed} (not private)",
        "trainable": list(cfg.trainable) if cfg.trainable else "all",
        "epochs": cfg.epochs,
        "settings": results,
    }
