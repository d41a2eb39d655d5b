"""``userlayer eval-explanations``: are the edge's explanations faithful, and how fast?

For every sampled user: the events before their last one are the history,
the last event's service, context and time are the request's. The items to
explain are the top ``k`` by constrained beam search after the explainer's
own prompt (the base, with the user's layer when ``layer="dp"``: trained
with DP-SGD on the history as the edge trains it). Each item's explanation
cites evidence (:mod:`userlayer.edge.explain`); faithfulness is then measured
as ERASER does (DeYoung et al., 2020), in log-probability of the item:

- comprehensiveness: ``score(full) - score(without the cited evidence)``;
  the share of explanations where it is positive (target >= 0.9) and its mean;
- sufficiency: ``score(full) - score(only the cited evidence)``: lower is better;
- the same two for as many units drawn at random from the request's evidence
  (the baseline a faithful explanation must beat), and for the empty prompt.

Latency: the wall time of :meth:`Explainer.explain` for ``k`` items, per user,
over users with at least ``latency_events`` events (median and p95).
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

from userlayer.edge.examples import ExampleConfig, user_examples
from userlayer.edge.exceptions import TrainingError
from userlayer.edge.explain import ExplainConfig, Explainer
from userlayer.edge.privacy import PrivacyLedger
from userlayer.edge.profile import build_profile
from userlayer.edge.training import DPConfig, TrainConfig, train_adapter
from userlayer.sdk.model.config import AdapterConfig
from userlayer.sdk.model.decoding import beam_search
from userlayer.sdk.model.io import load_model
from userlayer.sdk.model.transformer import new_adapter
from userlayer.sdk.privacy import DEFAULT_ACCOUNTANT, library
from userlayer.sdk.semantic_ids import SemanticIdTable, SidTrie
from userlayer.tools.data.format import Dataset

__all__ = ["ExplainEvalConfig", "evaluate_explanations"]

LAYERS = ("none", "dp")


@dataclass(frozen=True)
class ExplainEvalConfig:
    """What to measure; validated on creation."""

    users: int = 100
    min_events: int = 10
    k: int = 10
    beam: int = 20
    seed: int = 0
    layer: str = "none"  # "dp": each user's layer trained with DP-SGD first
    epsilon: float = 8.0  # per event, when layer == "dp"
    latency_events: int = 100
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.users < 1 or self.k < 1 or self.beam < self.k or self.min_events < 2:
            raise ValueError("users, k >= 1, beam >= k and min_events >= 2 are needed")
        if self.layer not in LAYERS:
            raise ValueError(f"layer should be one of {LAYERS}, got {self.layer!r}")


def _stats(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs, dtype=np.float64)
    if not a.size:
        return {"n": 0}
    return {"n": int(a.size), "mean": float(a.mean()), "median": float(np.median(a))}


def evaluate_explanations(
    data_dir: str | Path,
    model_dir: str | Path,
    cfg: ExplainEvalConfig | None = None,
    on_user: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the measurement of the module docstring; returns a JSON-ready dict."""
    cfg = cfg or ExplainEvalConfig()
    t0 = time.perf_counter()
    torch.set_flush_denormal(True)
    ds = Dataset.load(data_dir)
    model = load_model(model_dir).eval()
    table = SemanticIdTable.load(Path(model_dir) / "sids.json")
    trie = SidTrie(table)
    by_user = ds.user_events()
    titles = {r["item_id"]: r["title"] for r in ds.items.select(["item_id", "title"]).to_pylist()}
    ok = sorted(u for u, ev in by_user.items() if len(ev) >= cfg.min_events)
    rng = np.random.default_rng(cfg.seed)
    users = [ok[i] for i in sorted(rng.permutation(len(ok))[: cfg.users])]
    ledger = None
    if cfg.layer == "dp":
        path = Path(model_dir) / "explain-eval-ledger.db"
        path.unlink(missing_ok=True)
        ledger = PrivacyLedger(path, secrets.token_bytes(32), budget=cfg.epsilon + 1e-6)
    comp, suff, comp_r, suff_r, empty, latency, cited_n = [], [], [], [], [], [], []
    explained = with_evidence = 0
    texts: list[str] = []
    for n, u in enumerate(users):
        evs = sorted(by_user[u], key=lambda e: e.timestamp)
        last, history = evs[-1], evs[:-1]
        adapter = None
        if ledger is not None:
            try:
                ex = user_examples(
                    build_profile(evs), table, model.ctx_vocab, ExampleConfig(holdout=1)
                )
            except TrainingError:
                continue
            init = new_adapter(model.cfg, cfg.adapter, torch.Generator().manual_seed(cfg.seed + n))
            tcfg = replace(cfg.train, dp=DPConfig(target_epsilon=cfg.epsilon))
            adapter = train_adapter(model, cfg.adapter, ex, init, tcfg, ledger, u).adapter
        xp = Explainer(model, table, adapter, cfg.adapter, cfg.explain)
        req = xp.request(history, last.service, last.context)
        if not req.history:
            continue
        tok, ctx = xp.prompt_tensors(req)
        with torch.no_grad():
            recs = beam_search(
                model,
                trie,
                tok,
                ctx,
                k=cfg.k,
                beam=cfg.beam,
                services=[last.service.value],
                adapters=xp.row_adapters([last.context.mode]),
            )[0]
        items = [r.item_id for r in recs]
        if n == 0:  # warm-up: the first call's allocations are not what a user waits for
            xp.explain(history, last.service, items, last.context, last.timestamp, titles)
        ts = time.perf_counter()
        exps = xp.explain(history, last.service, items, last.context, last.timestamp, titles)
        if len(history) >= cfg.latency_events:
            latency.append((time.perf_counter() - ts) * 1000)
        explained += len(exps)
        units = xp.units(req)
        full = torch.tensor([e.log_prob for e in exps])
        cited = [[ev.unit for ev in e.evidence] for e in exps]
        keep = [i for i, c in enumerate(cited) if c]
        with_evidence += len(keep)
        if texts == [] and keep:
            texts.append(exps[keep[0]].text)
        if keep:
            its = [items[i] for i in keep]
            cs = [cited[i] for i in keep]
            draw = [[units[j] for j in rng.choice(len(units), len(c), replace=False)] for c in cs]
            f = full[keep]
            comp += (f - xp.without(req, its, cs)).tolist()
            suff += (f - xp.only(req, its, cs)).tolist()
            comp_r += (f - xp.without(req, its, draw)).tolist()
            suff_r += (f - xp.only(req, its, draw)).tolist()
            empty += (f - xp.only(req, its, [[] for _ in its])).tolist()
            cited_n += [len(c) for c in cs]
        if on_user:
            on_user(n + 1, len(users))
    if ledger is not None:
        ledger.close()
    lat = np.asarray(latency)
    return {
        "users": len(users),
        "layer": cfg.layer,
        "explanations": explained,
        "with_evidence": with_evidence,
        "evidence_per_explanation": _stats([float(x) for x in cited_n]),
        "comprehensiveness": {
            "cited": {**_stats(comp), "share_positive": _share(comp)},
            "random": {**_stats(comp_r), "share_positive": _share(comp_r)},
        },
        "sufficiency": {
            "cited": _stats(suff),
            "random": _stats(suff_r),
            "empty prompt": _stats(empty),
        },
        "latency_ms": {
            "items": cfg.k,
            "users": int(lat.size),
            "min_events": cfg.latency_events,
            "median": float(np.median(lat)) if lat.size else None,
            "p95": float(np.percentile(lat, 95)) if lat.size else None,
        },
        "example": texts[0] if texts else None,
        "epsilon": (
            {
                "target": cfg.epsilon,
                "unit": "event",
                "delta": 1e-5,
                "accountant": f"{DEFAULT_ACCOUNTANT} ({library()})",
            }
            if cfg.layer == "dp"
            else None
        ),
        "config": {"explain": asdict(cfg.explain), "k": cfg.k, "beam": cfg.beam},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _share(xs: list[float]) -> float | None:
    return float(np.mean(np.asarray(xs) > 0)) if xs else None
