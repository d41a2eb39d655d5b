"""``userlayer eval-adapters``: does a user's own adapter help on their held-out event?

For every sampled user: the profile of all their events but the last
(``holdout=1``), the user's examples (for each training view in ``prompts``:
event prompts, or session prompts charged their group), an adapter trained
from a fresh initialisation without DP and with DP-SGD at a target epsilon
per event, then the
held-out last event ranked from a private prompt (the current session only)
by the base alone and by the base with each adapter (constrained beam
search within the target's service). Reported: HR@10/NDCG@10 per variant,
and specificity after ../shared/seeds/003: the share of users whose held-out
loss is lower with their own adapter than with another user's.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from userlayer.edge.examples import (
    ExampleConfig,
    encode_prompt,
    mode_weights,
    session_before,
    user_examples,
)
from userlayer.edge.exceptions import TrainingError
from userlayer.edge.privacy import PrivacyLedger
from userlayer.edge.profile import ModeDetector, build_profile, sessionize
from userlayer.edge.training import DPConfig, TrainConfig, train_adapter
from userlayer.sdk.model.config import AdapterConfig
from userlayer.sdk.model.decoding import beam_search
from userlayer.sdk.model.io import load_model
from userlayer.sdk.model.prompt import pack_prompts
from userlayer.sdk.model.transformer import RowAdapters, new_adapter
from userlayer.sdk.privacy import DEFAULT_ACCOUNTANT, library
from userlayer.sdk.semantic_ids import SemanticIdTable, SidTrie
from userlayer.tools.data.format import Dataset
from userlayer.tools.eval.metrics import Accumulator

__all__ = [
    "AdapterEvalConfig",
    "HeldOut",
    "evaluate_adapters",
    "private_prompt",
    "rank_with_adapters",
]


@dataclass(frozen=True)
class AdapterEvalConfig:
    """What to measure."""

    users: int = 200
    seed: int = 0
    epsilon: float = 8.0
    beam: int = 20
    min_events: int = 10
    prompts: tuple[str, ...] = ("event",)  # training views compared (userlayer.edge.examples)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        for p in self.prompts:
            ExampleConfig(prompt=p)  # validates


def _pick_users(events: dict[str, list[Any]], cfg: AdapterEvalConfig) -> list[str]:
    ok = sorted(u for u, ev in events.items() if len(ev) >= cfg.min_events)
    rng = np.random.default_rng(cfg.seed)
    return [ok[i] for i in sorted(rng.permutation(len(ok))[: cfg.users])]


def evaluate_adapters(
    data_dir: str | Path,
    model_dir: str | Path,
    cfg: AdapterEvalConfig | None = None,
    work_dir: str | Path | None = None,
    on_user: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the measurement described in the module docstring; returns a JSON-ready dict."""
    cfg = cfg or AdapterEvalConfig()
    t0 = time.perf_counter()
    torch.set_flush_denormal(True)
    ds = Dataset.load(data_dir)
    model = load_model(model_dir)
    table = SemanticIdTable.load(Path(model_dir) / "sids.json")
    trie = SidTrie(table)
    cats = ds.categories()
    by_user = ds.user_events()
    users = _pick_users(by_user, cfg)
    vocab = model.ctx_vocab
    # a population mode detector from the other users' stated modes (a cloud-made prior)
    detector = ModeDetector()
    for u in sorted(set(by_user) - set(users))[:500]:
        detector.update(sessionize(by_user[u]), cats)
    work = Path(work_dir or Path(model_dir) / "adapter-eval")
    work.mkdir(parents=True, exist_ok=True)
    variants: dict[str, tuple[str, TrainConfig]] = {}
    for p in cfg.prompts:
        variants[f"adapter ({p} prompts, no DP)"] = (
            p,
            replace(cfg.train, dp=DPConfig(enabled=False)),
        )
        variants[f"adapter ({p} prompts, DP eps {cfg.epsilon:g})"] = (
            p,
            replace(cfg.train, dp=DPConfig(target_epsilon=cfg.epsilon)),
        )
    ledgers = {}
    for i, name in enumerate(variants):  # one ledger per variant: each may spend the budget
        path = work / f"ledger-{i}.db"
        path.unlink(missing_ok=True)
        ledgers[name] = PrivacyLedger(path, secrets.token_bytes(32), budget=cfg.epsilon + 1e-6)
    prompts, services, targets, contexts = [], [], [], []
    adapters: dict[str, list[dict[str, torch.Tensor]]] = {v: [] for v in variants}
    epsilons: dict[str, list[float]] = {v: [] for v in variants}
    seconds = {v: 0.0 for v in variants}
    kept = []
    for n, u in enumerate(users):
        prof = build_profile(by_user[u], categories=cats)
        evs = [e for e in prof.events if e.item_id in table.codes]
        if len(evs) < 3:
            continue
        try:
            examples = {
                p: user_examples(
                    prof, table, vocab, ExampleConfig(holdout=1, prompt=p), detector, cats
                )
                for p in cfg.prompts
            }
        except TrainingError:
            continue
        held = private_prompt(evs, table, vocab, detector, cats)
        g = torch.Generator().manual_seed(cfg.seed + n)
        init = new_adapter(model.cfg, cfg.adapter, g)
        for name, (p, tcfg) in variants.items():
            res = train_adapter(model, cfg.adapter, examples[p], init, tcfg, ledgers[name], u)
            adapters[name].append(res.adapter)
            seconds[name] += res.seconds
            if res.privacy is not None:
                epsilons[name].append(res.privacy.epsilon)
        kept.append(u)
        prompts.append((held.tokens, held.ctx))
        services.append(held.service)
        targets.append(held.target)
        contexts.append(held.mode_weights)
        if on_user:
            on_user(n + 1, len(users))
    for led in ledgers.values():
        led.close()
    tok, ctx = pack_prompts(prompts, len(vocab.sizes))
    modes = torch.tensor(contexts, dtype=torch.float32)
    results: dict[str, Any] = {
        "base only": rank_with_adapters(model, trie, tok, ctx, services, targets, None, cfg.beam)
    }
    spec: dict[str, float] = {}
    for name in variants:
        slab = {k: torch.stack([a[k] for a in adapters[name]]) for k in adapters[name][0]}
        index = torch.arange(len(kept))
        rows = RowAdapters.gather(cfg.adapter, slab, index, modes)
        results[name] = rank_with_adapters(model, trie, tok, ctx, services, targets, rows, cfg.beam)
        spec[name] = _specificity(
            model, cfg.adapter, slab, tok, ctx, targets, table, modes, cfg.seed
        )
    return {
        "users": len(kept),
        "metrics": results,
        "specificity": spec,
        "epsilon": {
            "target": cfg.epsilon,
            "unit": "event",
            "per_variant": {
                k: {"median": float(np.median(v)), "max": float(np.max(v))}
                for k, v in epsilons.items()
                if v
            },
            "delta": 1e-5,
            "accountant": f"{DEFAULT_ACCOUNTANT} ({library()})",
        },
        "train_seconds_per_user": {k: v / max(len(kept), 1) for k, v in seconds.items()},
        "config": {
            "adapter": cfg.adapter.to_dict(),
            "train": {k: v for k, v in asdict(cfg.train).items() if k != "dp"},
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }


@dataclass
class HeldOut:
    """A user's held-out last event as a private prompt."""

    tokens: list[int]
    ctx: list[list[int]]
    service: str
    target: str
    mode_weights: list[float]


def private_prompt(
    evs: list[Any],
    table: SemanticIdTable,
    vocab: Any,
    detector: ModeDetector | None,
    cats: Any,
    session: ExampleConfig | None = None,
) -> HeldOut:
    """The private prompt of the last event of ``evs`` (its session and context only)."""
    target = evs[-1]
    tok, ctx = encode_prompt(
        session_before(evs, len(evs) - 1, session or ExampleConfig()), target, table, vocab
    )
    return HeldOut(
        tok,
        ctx,
        target.service.value,
        target.item_id,
        mode_weights(target, evs[:-1], detector, cats),
    )


def rank_with_adapters(
    model: Any,
    trie: SidTrie,
    tok: torch.Tensor,
    ctx: torch.Tensor,
    services: list[str],
    targets: list[str],
    rows: RowAdapters | None,
    beam: int,
) -> dict[str, float]:
    """HR/NDCG of the targets by beam search within each row's service (rows may carry adapters)."""
    acc = Accumulator()
    bs = 128
    with torch.no_grad():
        for s in range(0, len(targets), bs):
            sl = slice(s, s + bs)
            ad = None if rows is None else rows.select(torch.arange(len(targets))[sl])
            recs = beam_search(
                model,
                trie,
                tok[sl],
                ctx[sl],
                k=10,
                beam=beam,
                services=services[sl],
                adapters=ad,
            )
            for r, t, sv in zip(recs, targets[sl], services[sl], strict=True):
                acc.add([x.item_id for x in r], t, sv)
    return acc.result()["all"]


def _specificity(
    model: Any,
    acfg: AdapterConfig,
    slab: dict[str, torch.Tensor],
    tok: torch.Tensor,
    ctx: torch.Tensor,
    targets: list[str],
    table: SemanticIdTable,
    modes: torch.Tensor,
    seed: int,
) -> float:
    """Share of users whose held-out target loss is lowest with their own adapter vs another's."""
    from userlayer.sdk.model.tokens import item_tokens

    codes = torch.tensor([item_tokens(table.level_sizes, table.codes[t]) for t in targets])
    full_tok = torch.cat([tok, codes], dim=1)
    full_ctx = torch.cat(
        [ctx, torch.zeros(len(targets), codes.shape[1], ctx.shape[2], dtype=torch.long)], 1
    )
    n = len(targets)
    other = (
        torch.arange(n) + 1 + torch.from_numpy(np.random.default_rng(seed).integers(0, n - 1, n))
    ) % n
    with torch.no_grad():
        own = model.loss(
            full_tok,
            full_ctx,
            RowAdapters.gather(acfg, slab, torch.arange(n), modes),
            reduction="none",
            last_item_only=True,
        )
        foreign = model.loss(
            full_tok,
            full_ctx,
            RowAdapters.gather(acfg, slab, other, modes),
            reduction="none",
            last_item_only=True,
        )
    return float((own < foreign).float().mean())
