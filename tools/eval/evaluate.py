"""``userlayer eval``: leave-one-out, full ranking, the generative model beside its baselines.

Protocol (``../shared/data/README.md``): the last event of every user is the
test target, the one before it validation; histories are capped at the last 20
items; Recall@5/10 and NDCG@5/10 over all items (Recall is the hit rate with
one target). Two input regimes: ``full`` (the last 20 items travel with the
request: the non-private reference) and ``private`` (only the current
session: events of the last 3 hours, at most 5; the last 3 items when the
data has only order, not time). Requests name their service, so every model
ranks the items of the target's service. The generative model ranks by
constrained beam search (beam 20 by default): items outside the final beam
rank below it, as in TIGER's evaluation.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from userlayer.sdk.model.decoding import Recommendation, beam_search
from userlayer.sdk.model.io import load_model
from userlayer.sdk.model.transformer import Recommender, RowAdapters
from userlayer.sdk.model.trie_search import TensorTrie
from userlayer.sdk.semantic_ids import SemanticIdTable, SidTrie
from userlayer.tools.data.format import Dataset
from userlayer.tools.eval.dense import DENSE_MODES, rank_head
from userlayer.tools.eval.metrics import Accumulator
from userlayer.tools.eval.sasrec import (
    SASRecConfig,
    item_indices,
    rank_sasrec,
    split_histories,
    train_sasrec,
)
from userlayer.tools.train.examples import (
    Prompt,
    UserSequences,
    build_prompts,
    pack_prompts,
    target_offset,
)

__all__ = [
    "EvalConfig",
    "evaluate",
    "full_history_check",
    "generative_lists",
    "rank_generative",
    "sasrec_rankings",
    "sasrec_results",
]

REGIMES = ("full", "private")
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings."""

    split: str = "test"
    k: int = 10
    beam: int = 20
    batch_size: int = 256
    baselines: tuple[str, ...] = ("popularity", "sasrec")
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    max_users: int | None = None  # evaluate a prefix of the users (smoke runs)
    # no model may return an item of the prompt's history (eSASRec's protocol; where
    # targets are never repeats, as on Beauty, it can only raise every row's metrics)
    exclude_seen: bool = False


def generative_lists(
    model: Recommender,
    trie: SidTrie,
    prompts: list[Prompt],
    cfg: EvalConfig,
    tick: Callable[[int], None] | None = None,
    adapters: RowAdapters | None = None,
) -> list[list[Recommendation]]:
    """The model's beam-search top-``cfg.k`` for each prompt, best first.

    ``adapters`` (one row per prompt) personalizes each prompt's row.
    """
    out: list[list[Recommendation]] = []
    for s in range(0, len(prompts), cfg.batch_size):
        chunk = prompts[s : s + cfg.batch_size]
        tok, ctx = pack_prompts(chunk)
        rows = None if adapters is None else adapters.select(torch.arange(s, s + len(chunk)))
        out.extend(
            beam_search(
                model,
                trie,
                tok,
                ctx,
                k=cfg.k,
                beam=cfg.beam,
                services=[p.service for p in chunk],
                exclude=[p.history for p in chunk] if cfg.exclude_seen else None,
                adapters=rows,
            )
        )
        if tick is not None:
            tick(len(chunk))
    return out


def rank_generative(
    model: Recommender,
    trie: SidTrie,
    prompts: list[Prompt],
    cfg: EvalConfig,
    tick: Callable[[int], None] | None = None,
    adapters: RowAdapters | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of the model's beam-search top-k on ``prompts``, per group (``all``, services).

    ``adapters`` (one row per prompt) personalizes each prompt's row.
    """
    acc = Accumulator()
    recs = generative_lists(model, trie, prompts, cfg, tick, adapters)
    for p, r in zip(prompts, recs, strict=True):
        acc.add([x.item_id for x in r], p.target, p.service)
    return acc.result()


def full_history_check(results: dict[str, Any]) -> dict[str, Any]:
    """Where a model scores lower with the whole history than with the private session.

    More of the user's history must never make the base worse (the same users,
    the same targets): every model, every group (all, each service), R@10 and
    N@10. Returns ``{"ok": bool, "violations": [...]}``, each violation naming
    the model, group, metric and both values.
    """
    bad = []
    for name, by_regime in results.items():
        full, private = by_regime.get("full"), by_regime.get("private")
        if not full or not private:
            continue
        for group, m in full.items():
            for metric in ("R@10", "N@10"):
                f, p = m.get(metric), private.get(group, {}).get(metric)
                if f is not None and p is not None and f < p:
                    bad.append(
                        {"model": name, "group": group, "metric": metric, "full": f, "private": p}
                    )
    return {"ok": not bad, "violations": bad}


def sasrec_rankings(
    seqs: UserSequences,
    table: SemanticIdTable,
    prompts: dict[str, list[Prompt]],
    cfg: EvalConfig,
    k: int | None = None,
) -> dict[str, list[list[str]]]:
    """Train SASRec on every user's training part; each regime's top-``k`` item ids per prompt.

    ``k`` defaults to ``cfg.k``.
    """
    item_ids = sorted(table.codes)
    index = item_indices(item_ids)
    service_of = table.services
    # SASRec's own protocol: train on what precedes the held-out items, stop early on the
    # validation item (the one just before the split's target; for the test split, the
    # validation split's target), keep the best epoch. The test item is never read, and the
    # model has seen every transition before the validation item (no refit needed).
    train, valid = split_histories(seqs.items, item_ids, target_offset(cfg.split))
    sasrec = train_sasrec(
        train,
        len(item_ids),
        replace(cfg.sasrec, exclude_seen=cfg.exclude_seen),  # validation as the test ranks
        lambda ep, loss: logger.info("SASRec epoch %d: loss %.4f", ep, loss),
        valid,
        lambda ep, n: logger.info("SASRec epoch %d: validation NDCG@10 %.4f", ep, n),
    )
    logger.info("SASRec: best validation at epoch %d", sasrec.best_epoch)
    svc_mask = {
        s: torch.tensor([False] + [service_of[i].value == s for i in item_ids])
        for s in {p.service for ps in prompts.values() for p in ps}
    }
    out = {}
    for r, ps in prompts.items():
        hist = [[index[i] for i in p.history] for p in ps]
        allowed = torch.stack([svc_mask[p.service] for p in ps])
        ranked = rank_sasrec(
            sasrec, hist, k or cfg.k, allowed, exclude=hist if cfg.exclude_seen else None
        )
        out[r] = [[item_ids[j - 1] for j in rk] for rk in ranked]
    return out


def sasrec_results(
    seqs: UserSequences,
    table: SemanticIdTable,
    prompts: dict[str, list[Prompt]],
    cfg: EvalConfig,
) -> dict[str, dict[str, dict[str, float]]]:
    """Train SASRec on every user's training part and rank each regime's prompts with it."""
    out = {}
    for r, ranked in sasrec_rankings(seqs, table, prompts, cfg).items():
        acc = Accumulator()
        for p, rk in zip(prompts[r], ranked, strict=True):
            acc.add(rk, p.target, p.service)
        out[r] = acc.result()
    return out


def evaluate(
    data_dir: str | Path,
    model_dir: str | Path | None,
    cfg: EvalConfig | None = None,
    tick: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate the model in ``model_dir`` (if given) and the baselines on ``data_dir``.

    Returns ``{"protocol": ..., "results": {name: {regime: {group: metrics}}}, ...}``.
    """
    cfg = cfg or EvalConfig()
    tick = tick or (lambda n: None)
    torch.set_flush_denormal(True)
    data_dir = Path(data_dir)
    table = SemanticIdTable.load(
        Path(model_dir) / "sids.json" if model_dir else data_dir / "sids.json"
    )
    ds = Dataset.load(data_dir)
    model = None if model_dir is None else load_model(model_dir)
    # context ids must use the model's geo buckets (the default when there is no model)
    if model is None:
        seqs = UserSequences.from_dataset(ds, table)
    else:
        seqs = UserSequences.from_dataset(ds, table, model.cfg.geo_buckets)
    prompts = {r: build_prompts(seqs, cfg.split, r) for r in REGIMES}  # type: ignore[arg-type]
    if cfg.max_users:
        prompts = {r: p[: cfg.max_users] for r, p in prompts.items()}
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    if model_dir is not None:
        t0 = time.perf_counter()
        assert model is not None
        trie = table.trie()
        results["generative"] = {
            r: rank_generative(model, trie, prompts[r], cfg, tick) for r in REGIMES
        }
        timings["generative"] = time.perf_counter() - t0
        if model.cfg.n_items:  # the dense item head: alone, reranking the beam, fused
            t0 = time.perf_counter()  # the three share each batch's prefill and beam
            tensor_trie = TensorTrie(table)
            by_regime = {
                r: rank_head(
                    model,
                    tensor_trie,
                    prompts[r],
                    DENSE_MODES,
                    cfg.k,
                    cfg.beam,
                    cfg.batch_size,
                    cfg.exclude_seen,
                    tick,
                )
                for r in REGIMES
            }
            for mode in DENSE_MODES:
                results[f"generative ({mode})"] = {r: by_regime[r][mode] for r in REGIMES}
            timings[f"generative ({', '.join(DENSE_MODES)})"] = time.perf_counter() - t0
    # baselines see the same training part: all but the last two events (one for test)
    back = target_offset(cfg.split)
    train = [items[: len(items) - back - 1] for items in seqs.items]
    service_of = table.services
    if "popularity" in cfg.baselines:
        t0 = time.perf_counter()
        counts = Counter(i for s in train for i in s)
        top: dict[str, list[str]] = {}
        depth = cfg.k + (20 if cfg.exclude_seen else 0)  # room for the history's items
        for item, _ in counts.most_common():
            lst = top.setdefault(service_of[item].value, [])
            if len(lst) < depth:
                lst.append(item)
        results["popularity"] = {}
        for r in REGIMES:
            acc = Accumulator()
            for p in prompts[r]:
                ranked = top.get(p.service, [])
                if cfg.exclude_seen:
                    seen = set(p.history)
                    ranked = [i for i in ranked if i not in seen]
                acc.add(ranked[: cfg.k], p.target, p.service)
            results["popularity"][r] = acc.result()
        timings["popularity"] = time.perf_counter() - t0
    if "sasrec" in cfg.baselines:
        t0 = time.perf_counter()
        results["sasrec"] = sasrec_results(seqs, table, prompts, cfg)
        timings["sasrec"] = time.perf_counter() - t0
    return {
        "protocol": {
            "split": cfg.split,
            "k": cfg.k,
            "beam": cfg.beam,
            "users": len(prompts["full"]),
            "history_cap": 20,
            "private_session": "last 3 h, at most 5 items (order-only data: last 3)",
            "ranking": "items of the target's service"
            + (", none of the prompt's history" if cfg.exclude_seen else ""),
        },
        "results": results,
        "checks": {"full history >= private": full_history_check(results)},
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "data": str(data_dir),
        "model": None if model_dir is None else str(model_dir),
    }
