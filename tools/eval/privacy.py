"""``userlayer eval-privacy``: the privacy-utility curve of the user layer.

Every row is over the same users and the same split (leave-one-out, the test
target; ``../shared/data/README.md``), in one run:

- references: the base with the full 20-item history (the non-private
  regime), the base with the current session only (private, no user layer)
  and, with ``sasrec``, SASRec with the full history;
- the private regime (current session only) with each way of making the
  user layer, at each per-event epsilon and without DP:

  - ``profile`` (way b): the profile encoder's Gaussian release of every
    event before the target (:mod:`userlayer.edge.encoder`; the noise
    multiplier calibrated to the epsilon by the accountant, noise from the OS
    CSPRNG), its prefix as the user's layer and, with ``favourites`` > 0, the
    favourite items released in the same mechanism put before the session
    (:mod:`userlayer.sdk.privacy.favourites`); "no DP" is the exact profile
    (and the items bought at least twice);
  - ``dp-sgd`` (way a): the personal tensors trained with DP-SGD on the
    user's events (event prompts, :mod:`userlayer.edge.training`);
  - ``both`` (a+b): the profile released at ``both_share`` of the epsilon,
    then DP-SGD from it at the rest (basic composition; the ledger's
    accountant composes them tighter).

Specificity (after ../shared/seeds/003): the share of users whose held-out
target has a lower loss with their own layer than with another user's
(chance is 50%).
"""

from __future__ import annotations

import math
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from userlayer.edge.encoder import release_profile
from userlayer.edge.examples import ExampleConfig, user_examples
from userlayer.edge.privacy import PrivacyLedger
from userlayer.edge.profile import build_profile
from userlayer.edge.training import DPConfig, TrainConfig, train_adapter
from userlayer.sdk.model.config import AdapterConfig
from userlayer.sdk.model.io import load_model
from userlayer.sdk.model.tokens import ContextVocab
from userlayer.sdk.model.transformer import Recommender, RowAdapters, new_adapter
from userlayer.sdk.privacy import DEFAULT_ACCOUNTANT, dp_random, library, noise_multiplier
from userlayer.sdk.privacy.favourites import FavouritesConfig, occasions, select_favourites
from userlayer.sdk.semantic_ids import SemanticIdTable, SidTrie
from userlayer.tools.data.format import Dataset
from userlayer.tools.eval.evaluate import EvalConfig, rank_generative, sasrec_results
from userlayer.tools.exceptions import ToolsError
from userlayer.tools.train.examples import (
    Prompt,
    UserSequences,
    build_prompts,
    favourite_prompt,
    pack_scored,
    profile_inputs,
)

__all__ = ["WAYS", "PrivacyEvalConfig", "evaluate_privacy", "plot_privacy"]

WAYS = ("profile", "dp-sgd", "both")
DELTA = 1e-5


@dataclass(frozen=True)
class PrivacyEvalConfig:
    """What to measure; validated on creation."""

    epsilons: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    ways: tuple[str, ...] = ("profile",)
    users: int = 0  # 0: every user with a test target; else a sample of this many
    seed: int = 0  # picks the users and the DP-SGD initialisation (never DP noise)
    beam: int = 20
    sasrec: bool = True
    both_share: float = 0.5  # share of the epsilon spent on the profile in "both"
    horizon_days: float = 365.0  # the ledger's period: events older are left out
    favourites: int = 10  # favourite items in the profile release (0: the prefix only)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        bad = [w for w in self.ways if w not in WAYS]
        if bad or not self.ways:
            raise ToolsError(f"`ways` should be some of {WAYS}, got {list(self.ways)}")
        if not self.epsilons or any(not (e > 0 and math.isfinite(e)) for e in self.epsilons):
            raise ToolsError(f"`epsilons` should be positive, got {list(self.epsilons)}")
        if self.users < 0 or not 0 < self.both_share < 1:
            raise ToolsError("`users` should be >= 0 and `both_share` in (0, 1)")
        if not 0 <= self.favourites <= 64:
            raise ToolsError(f"`favourites` should be in [0, 64], got {self.favourites}")


def _profile_prefixes(
    model: Recommender, seqs: UserSequences, pairs: list[tuple[int, int]], z: float, cfg: Any
) -> Tensor:
    """Released prefixes (N, P, d) of each (user, target) at noise multiplier ``z`` (0: exact)."""
    enc = model.profile
    assert enc is not None
    rng = dp_random()
    out = []
    with torch.no_grad():
        for s in range(0, len(pairs), 256):
            chunk = pairs[s : s + 256]
            stats = enc.stats(*profile_inputs(seqs, chunk, cfg.horizon_days))
            if z > 0:
                stats = stats + torch.from_numpy(rng.gaussian(tuple(stats.shape), z)).float()
            out.append(enc(stats, torch.full((len(chunk),), z)))
    return torch.cat(out)


def _favourites(
    seqs: UserSequences,
    table: SemanticIdTable,
    pairs: list[tuple[int, int]],
    sigma: float,
    fcfg: FavouritesConfig,
    cfg: PrivacyEvalConfig,
) -> list[list[str]]:
    """Released favourites of each (user, target): the events before it, inside the horizon."""
    catalog = sorted(table.codes)
    rng = dp_random()
    out = []
    for u, ti in pairs:
        times = seqs.times[u]
        first = int(np.searchsorted(times[:ti], times[ti] - int(cfg.horizon_days * 86_400_000)))
        days = (seqs.times[u][first:ti] // 86_400_000).tolist()
        once = occasions(seqs.items[u][first:ti], days)
        out.append(select_favourites(once, catalog, sigma, fcfg, rng))
    return out


def _specificity(
    model: Recommender,
    acfg: AdapterConfig,
    slab: dict[str, Tensor],
    prompts: list[Prompt],
    table: SemanticIdTable,
    seed: int,
    with_layer: Callable[[int, int], Prompt] | None = None,
) -> float:
    """Share of users whose target loss is lower with their own layer than another user's.

    ``with_layer(i, j)`` is user ``i``'s prompt as user ``j``'s layer makes
    it (favourites); by default the layer leaves the prompt as it is.
    """
    n = len(prompts)
    if n < 2:
        return float("nan")
    other = (
        torch.arange(n) + 1 + torch.from_numpy(np.random.default_rng(seed).integers(0, n - 1, n))
    ) % n
    make = with_layer or (lambda i, j: prompts[i])
    own_l: list[Tensor] = []
    other_l: list[Tensor] = []
    with torch.no_grad():
        for s in range(0, n, 256):
            sl = torch.arange(s, min(n, s + 256))
            for idx, acc in ((sl, own_l), (other[sl], other_l)):
                rows = RowAdapters.gather(acfg, slab, idx)
                scored = [make(int(i), int(j)) for i, j in zip(sl, idx, strict=True)]
                tok, ctx = pack_scored(scored, table)
                acc.append(model.loss(tok, ctx, rows, "none", last_item_only=True))
    return float((torch.cat(own_l) < torch.cat(other_l)).float().mean())


def _score_layers(
    model: Recommender,
    trie: SidTrie,
    ecfg: EvalConfig,
    acfg: AdapterConfig,
    slab: dict[str, Tensor],
    favs: list[list[str]],
    private: list[Prompt],
    table: SemanticIdTable,
    seed: int,
) -> tuple[dict[str, float], float]:
    """Metrics and specificity of the private prompts with each user's layer.

    Row ``i``'s layer is ``slab``'s row ``i`` and its favourites ``favs[i]``,
    put before the session as the cloud serves them.
    """
    vocab = ContextVocab(model.cfg.geo_buckets)
    room = model.cfg.max_items - 1

    def with_layer(i: int, j: int) -> Prompt:
        return favourite_prompt(table, vocab, favs[j], private[i], room)

    n = len(private)
    ad = RowAdapters.gather(acfg, slab, torch.arange(n))
    prompts = [with_layer(i, i) for i in range(n)]
    m = rank_generative(model, trie, prompts, ecfg, adapters=ad)["all"]
    return m, _specificity(model, acfg, slab, private, table, seed, with_layer)


def _row(
    way: str, eps: float | None, metrics: dict[str, float], spec: float, secs: float, **kw: Any
) -> dict[str, Any]:
    return {
        "way": way,
        "epsilon": eps,
        **{k: metrics[k] for k in ("R@5", "N@5", "R@10", "N@10")},
        "specificity": spec,
        "seconds_per_user": secs,
        **kw,
    }


def evaluate_privacy(
    data_dir: str | Path,
    model_dir: str | Path,
    cfg: PrivacyEvalConfig | None = None,
    tick: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the measurement of the module docstring; returns a JSON-ready dict.

    ``tick(stage, done, total)`` reports progress.

    Raises:
        ToolsError: the model has no profile encoder but ``profile``/``both`` is asked.
    """
    cfg = cfg or PrivacyEvalConfig()
    tick = tick or (lambda stage, done, total: None)
    t_start = time.perf_counter()
    torch.set_flush_denormal(True)
    model = load_model(model_dir).eval()
    if model.profile is None and {"profile", "both"} & set(cfg.ways):
        raise ToolsError(
            f"{model_dir} has no profile encoder: pretrain a base with `profile_dim` > 0"
        )
    table = SemanticIdTable.load(Path(model_dir) / "sids.json")
    ds = Dataset.load(data_dir)
    seqs = UserSequences.from_dataset(ds, table, model.cfg.geo_buckets)
    full = build_prompts(seqs, "test", "full")
    private = build_prompts(seqs, "test", "private")
    index = {u: i for i, u in enumerate(seqs.users)}
    keep = list(range(len(private)))
    if cfg.users and cfg.users < len(keep):
        keep = sorted(np.random.default_rng(cfg.seed).permutation(len(keep))[: cfg.users])
    full, private = [full[i] for i in keep], [private[i] for i in keep]
    pairs = [(index[p.user], len(seqs.items[index[p.user]]) - 1) for p in private]
    n = len(private)
    if n == 0:
        raise ToolsError(f"no user of {data_dir} has a test target")
    ecfg = EvalConfig(beam=cfg.beam)
    refs: dict[str, Any] = {}
    stages = 2 + (1 + len(cfg.epsilons)) * len(cfg.ways)
    done = 0
    tick("base", done, stages)
    trie = table.trie()
    refs["base, full history"] = rank_generative(model, trie, full, ecfg)["all"]
    refs["base, private (session only)"] = rank_generative(model, trie, private, ecfg)["all"]
    done += 2
    if cfg.sasrec:
        tick("SASRec", done, stages)
        refs["SASRec, full history"] = sasrec_results(seqs, table, {"full": full}, ecfg)["full"][
            "all"
        ]
    rows: list[dict[str, Any]] = []
    pcfg = AdapterConfig(n_prefix=model.cfg.profile_prefix, film=False, n_modes=0, targets=())
    settings: list[float | None] = [None, *cfg.epsilons]
    if "profile" in cfg.ways:
        fcfg = FavouritesConfig(k=cfg.favourites) if cfg.favourites else None
        for eps in settings:
            tick(f"profile, epsilon {eps or 'none'}", done, stages)
            t0 = time.perf_counter()
            z = 0.0 if eps is None else noise_multiplier(eps, DELTA, 1.0, 1)
            # a joint release (edge.encoder): each block read at its scale's noise
            share = 0.0 if fcfg is None else fcfg.share
            slab = {"prefix": _profile_prefixes(model, seqs, pairs, z / math.sqrt(1 - share), cfg)}
            favs = (
                [[] for _ in pairs]
                if fcfg is None
                else _favourites(seqs, table, pairs, z / math.sqrt(share), fcfg, cfg)
            )
            secs = (time.perf_counter() - t0) / n
            m, spec = _score_layers(model, trie, ecfg, pcfg, slab, favs, private, table, cfg.seed)
            rows.append(
                _row(
                    "profile",
                    eps,
                    m,
                    spec,
                    secs,
                    noise_multiplier=z,
                    favourites_mean=float(np.mean([len(f) for f in favs])),
                )
            )
            done += 1
    trained = [w for w in cfg.ways if w != "profile"]
    if trained:
        rows.extend(_trained_rows(model, ds, table, seqs, private, pairs, cfg, trained, tick))
    return {
        "users": n,
        "split": "test (leave-one-out: the last event)",
        "regime": "private: the current session only (3 h, at most 5 items; order-only data: 3)",
        "references": refs,
        "rows": rows,
        "privacy": {
            "unit": "event",
            "delta": DELTA,
            "accountant": f"{DEFAULT_ACCOUNTANT} ({library()})",
            "noise": "os-csprng",
        },
        "config": {
            "ways": list(cfg.ways),
            "epsilons": list(cfg.epsilons),
            "both_share": cfg.both_share,
            "favourites": cfg.favourites,
            "beam": cfg.beam,
            "users": cfg.users,
            "seed": cfg.seed,
        },
        "seconds": round(time.perf_counter() - t_start, 1),
    }


def _trained_rows(
    model: Recommender,
    ds: Dataset,
    table: SemanticIdTable,
    seqs: UserSequences,
    private: list[Prompt],
    pairs: list[tuple[int, int]],
    cfg: PrivacyEvalConfig,
    ways: list[str],
    tick: Callable[[str, int, int], None],
) -> list[dict[str, Any]]:
    """Rows of the ways that train per user (dp-sgd, both): one training per user and setting."""
    acfg = cfg.adapter
    by_user = ds.user_events()
    cats = ds.categories()
    settings: list[float | None] = [None, *cfg.epsilons]
    slabs: dict[tuple[str, float | None], list[dict[str, Tensor]]] = {}
    favs: dict[tuple[str, float | None], list[list[str]]] = {}
    fcfg = FavouritesConfig(k=cfg.favourites) if cfg.favourites else None
    secs: dict[tuple[str, float | None], float] = {}
    spent: dict[tuple[str, float | None], list[float]] = {}
    total = len(private) * len(ways) * len(settings)
    done = 0
    with tempfile.TemporaryDirectory(prefix="userlayer-eval-privacy-") as tmp:
        for i, p in enumerate(private):
            prof = build_profile(by_user[p.user], categories=cats)
            ex = user_examples(
                prof, table, model.ctx_vocab, ExampleConfig(holdout=1), allow_empty=True
            )
            target_time = prof.events[-1].timestamp if prof.events else None
            init = new_adapter(model.cfg, acfg, torch.Generator().manual_seed(cfg.seed + i))
            for way in ways:
                for eps in settings:
                    t0 = time.perf_counter()
                    ledger = PrivacyLedger(
                        Path(tmp) / f"l{i}-{way}-{eps}.db",
                        secrets.token_bytes(32),
                        budget=(eps or 1.0) + 1e-6,
                        period_days=cfg.horizon_days,
                    )
                    start = dict(init)
                    sgd_eps = eps
                    released: list[str] = []
                    if way == "both" and eps is None:
                        start = _exact_profile(model, seqs, pairs[i], init, cfg)
                        if fcfg is not None:
                            released = _favourites(seqs, table, [pairs[i]], 0.0, fcfg, cfg)[0]
                    elif way == "both" and eps is not None:
                        b_eps = eps * cfg.both_share
                        rel = release_profile(
                            model,
                            acfg,
                            table,
                            prof.events[:-1],
                            b_eps,
                            ledger,
                            p.user,
                            init,
                            now=target_time,
                            favourites=fcfg,
                        )
                        start, released = rel.adapter, list(rel.favourites)
                        sgd_eps = eps - b_eps
                    favs.setdefault((way, eps), []).append(released)
                    dp = (
                        DPConfig(enabled=False)
                        if sgd_eps is None
                        else DPConfig(target_epsilon=sgd_eps)
                    )
                    tcfg = replace(cfg.train, dp=dp)
                    if len(ex) == 0 and sgd_eps is None:
                        out = start
                    else:
                        out = train_adapter(
                            model, acfg, ex, start, tcfg, ledger, p.user, now=target_time
                        ).adapter
                    if eps is not None:  # what the ledger composed, both releases included
                        spent.setdefault((way, eps), []).append(
                            ledger.spent(p.user, now=target_time)
                        )
                    ledger.close()
                    slabs.setdefault((way, eps), []).append(out)
                    secs[(way, eps)] = secs.get((way, eps), 0.0) + time.perf_counter() - t0
                    done += 1
                    tick(f"training {way}", done, total)
    rows = []
    trie = table.trie()
    ecfg = EvalConfig(beam=cfg.beam)
    n = len(private)
    for (way, eps), adapters in slabs.items():
        slab = {k: torch.stack([a[k] for a in adapters]) for k in adapters[0]}
        layer_favs = favs[(way, eps)]
        m, spec = _score_layers(model, trie, ecfg, acfg, slab, layer_favs, private, table, cfg.seed)
        eps_max = max(spent[(way, eps)]) if (way, eps) in spent else None
        mean_favs = float(np.mean([len(f) for f in layer_favs]))
        rows.append(
            _row(
                way,
                eps,
                m,
                spec,
                secs[(way, eps)] / n,
                epsilon_spent_max=eps_max,
                favourites_mean=mean_favs,
            )
        )
    return rows


def _exact_profile(
    model: Recommender,
    seqs: UserSequences,
    pair: tuple[int, int],
    init: dict[str, Tensor],
    cfg: PrivacyEvalConfig,
) -> dict[str, Tensor]:
    out = dict(init)
    out["prefix"] = _profile_prefixes(model, seqs, [pair], 0.0, cfg)[0]
    return out


def plot_privacy(res: dict[str, Any], out: str | Path) -> Path:
    """PNG: NDCG@10 and HR@10 against epsilon per way, references as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    eps = sorted({r["epsilon"] for r in res["rows"] if r["epsilon"] is not None})
    nodp_x = max(eps) * 2.5 if eps else 1.0
    for ax, key in zip(axes, ("N@10", "R@10"), strict=True):
        for way in WAYS:
            rs = [r for r in res["rows"] if r["way"] == way]
            if not rs:
                continue
            pts = sorted((r["epsilon"] or nodp_x, r[key]) for r in rs)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=way)
        styles = ("--", ":", "-.")
        for (name, m), ls in zip(res["references"].items(), styles, strict=False):
            ax.axhline(m[key], linestyle=ls, color="gray", label=name)
        ax.set_xscale("log")
        ticks = [*eps, nodp_x]
        ax.set_xticks(ticks, [f"{e:g}" for e in eps] + ["no DP"])
        ax.set_xlabel("epsilon per event (delta 1e-5)")
        ax.set_title(f"{key}, private regime, {res['users']} users")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    p = Path(out)
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p
