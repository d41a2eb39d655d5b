"""``userlayer eval-critiques``: do critiques help, do they ever break, what do they cost?

Critique episodes are made from each dataset's own ground truth, as REGEN
made critiques for adjacent items (Google, 2025): for a user's held-out last
event (the target), the session's last item is the one the user reacts to
(the reference). Where the two differ in a way a critique can say, one
such critique is drawn (seeded):

- the target costs at least 5% less (more): "подешевле" / "cheaper"
  ("подороже" / "more expensive");
- another brand: "другой бренд" / "another brand";
- the reference mentions a concept the target does not (meat, sugar, ...):
  "без мяса" / "no meat";
- a bigger (smaller) pack of its category: "побольше" / "bigger pack" (a soft
  steer: ranks, does not filter);
- healthier, or for a child, by the lexicon's soft scores: "полезнее" /
  "healthier", "для ребёнка" / "for a kid" (soft).

The next item then satisfies the critique by construction. Where the dataset
comes with the simulator's own episodes (``critiques.jsonl``: a shown item
the user's latent tastes reject, what they said, the purchase that followed;
:mod:`userlayer.tools.data.critique_episodes`), those are used instead: the
shown item ends the request's session, the held-out last event is the
target. Reported, on the
same episodes and the same engine: R@10 / NDCG@10 of the target without and
with the critique (per kind); the share of returned items that violate a
hard constraint, checked against the catalog's attributes (must be 0); and
the engine's rows/s at a batch of 64 with and without critiques, in one run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from userlayer.cloud.engine.engine import Engine, EngineConfig, EngineRequest
from userlayer.edge.examples import ExampleConfig, session_before
from userlayer.sdk.critique import (
    CONCEPTS,
    CatalogIndex,
    Critique,
    ItemAttributes,
    parse_critique,
)
from userlayer.sdk.schemas import Event
from userlayer.tools.data.critique_episodes import load_episodes
from userlayer.tools.data.format import Dataset
from userlayer.tools.eval.metrics import Accumulator
from userlayer.tools.train.examples import DEFAULT_ACTIONS

__all__ = ["LEARNED", "LEARNED_ONLY", "CritiqueEvalConfig", "evaluate_critiques", "make_episode"]

LEARNED = "with critique + learned steer"  # hard constraints, lexicon and learned steer
LEARNED_ONLY = "learned steer only"  # no mask, no lexicon: what the learned steer does alone

_TEXT = {
    "ru": {
        "cheaper": "подешевле",
        "pricier": "подороже",
        "brand": "другой бренд",
        "bigger": "побольше упаковку",
        "smaller": "поменьше упаковку",
        "healthier": "полезнее",
        "kids": "для ребёнка",
    },
    "en": {
        "cheaper": "cheaper",
        "pricier": "more expensive",
        "brand": "another brand",
        "bigger": "bigger pack",
        "smaller": "smaller pack",
        "healthier": "healthier",
        "kids": "for a kid",
    },
}
_WITHOUT_EN = {"meat": "meat", "fish": "fish", "sugar": "sugar", "dairy": "milk",
               "gluten": "gluten", "alcohol": "alcohol", "nuts": "nuts"}  # fmt: skip


@dataclass(frozen=True)
class CritiqueEvalConfig:
    """What to measure; validated on creation."""

    users: int = 1000
    min_events: int = 3
    k: int = 10
    language: str = "ru"
    seed: int = 0
    batch: int = 64
    repeats: int = 5
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(backend="torch"))

    def __post_init__(self) -> None:
        if self.users < 1 or self.k < 1 or self.batch < 1 or self.repeats < 1:
            raise ValueError("users, k, batch and repeats should be at least 1")
        if self.language not in _TEXT:
            raise ValueError(f"language should be one of {sorted(_TEXT)}, got {self.language!r}")


@dataclass(frozen=True)
class Episode:
    """One critique episode: the request's session and context, the critique, the target."""

    kind: str
    text: str
    session: tuple[str, ...]
    target: Event


def make_episode(
    catalog: CatalogIndex,
    session: tuple[str, ...],
    target: Event,
    language: str,
    rng: np.random.Generator,
) -> Episode | None:
    """A critique the target satisfies against the session's last item (None: no such)."""
    r = catalog.index_of(session[-1]) if session else -1
    t = catalog.index_of(target.item_id)
    if r < 0 or t < 0 or r == t:
        return None
    kinds: list[tuple[str, str]] = []
    words = _TEXT[language]
    pr, pt = catalog.price[r], catalog.price[t]
    if not np.isnan(pr) and not np.isnan(pt):
        if pt < 0.95 * pr:
            kinds.append(("cheaper", words["cheaper"]))
        elif pt > 1.05 * pr:
            kinds.append(("pricier", words["pricier"]))
    if catalog.brand[r] and catalog.brand[t] and catalog.brand[r] != catalog.brand[t]:
        kinds.append(("brand", words["brand"]))
    for name, c in CONCEPTS.items():
        m = catalog.mentions(name)
        if m[r] and not m[t]:
            kinds.append(
                (
                    f"without {name}",
                    f"без {c.ru}" if language == "ru" else f"no {_WITHOUT_EN[name]}",
                )
            )
    sr, st = catalog.pack_size(r), catalog.pack_size(t)
    blank = ItemAttributes()
    same_cat = (
        catalog.attributes.get(session[-1], blank).category
        == catalog.attributes.get(target.item_id, blank).category
    )
    if same_cat and not np.isnan(sr) and not np.isnan(st) and sr != st:
        kinds.append(("bigger", words["bigger"]) if st > sr else ("smaller", words["smaller"]))
    for soft in ("healthier", "kids"):  # the lexicon's soft scores: the target scores higher
        score = catalog.steer([soft])
        if score[t] > score[r] and score[t] > 0:
            kinds.append((soft, words[soft]))
    if not kinds:
        return None
    kind, text = kinds[int(rng.integers(len(kinds)))]
    return Episode(kind, text, session, target)


def _violations(catalog: CatalogIndex, crit: Critique, session: tuple[str, ...], item: str) -> int:
    """1 if ``item`` breaks a hard constraint of ``crit``, read from the attributes."""
    i = catalog.index_of(item)
    if i < 0:
        return 1  # not in the catalog: nothing shows it satisfies the critique
    ref = [j for j in (catalog.index_of(s) for s in session) if j >= 0]
    priced = [j for j in ref if not np.isnan(catalog.price[j])]
    if crit.price and priced:
        p, q = catalog.price[priced[-1]], catalog.price[i]
        if np.isnan(q) or (q >= p if crit.price == "lower" else q <= p):
            return 1
    branded = [j for j in ref if catalog.brand[j]]
    if crit.other_brand and branded and catalog.brand[i] == catalog.brand[branded[-1]]:
        return 1
    return int(any(catalog.mentions(w)[i] for w in crit.without))


def evaluate_critiques(
    data_dir: str | Path,
    model_dir: str | Path,
    cfg: CritiqueEvalConfig | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the measurement of the module docstring; returns a JSON-ready dict."""
    cfg = cfg or CritiqueEvalConfig()
    t0 = time.perf_counter()
    ds = Dataset.load(data_dir)
    engine = Engine(model_dir, cfg.engine)
    attrs: dict[str, ItemAttributes] = ds.attributes()
    catalog = engine.catalog or CatalogIndex(engine.tensor_trie.items, attrs)
    # the actions the base is pretrained on (a re-rating is not a next item)
    by_user = ds.user_events(actions=DEFAULT_ACTIONS)
    rng = np.random.default_rng(cfg.seed)
    ok = sorted(u for u, ev in by_user.items() if len(ev) >= cfg.min_events)
    simulated = load_episodes(data_dir)
    if simulated is not None:  # the simulator's own: users with an episode
        by_ep = {e.user_id: e for e in simulated}
        ok = [u for u in ok if u in by_ep]
    users = [ok[i] for i in sorted(rng.permutation(len(ok))[: cfg.users])]
    episodes: list[Episode] = []
    scfg = ExampleConfig()
    for u in users:
        evs = sorted(by_user[u], key=lambda e: e.timestamp)
        sess = tuple(e.item_id for e in session_before(evs, len(evs) - 1, scfg))
        if simulated is not None:
            sim = by_ep[u]
            if sim.target == evs[-1].item_id and catalog.index_of(sim.shown) >= 0:
                episodes.append(
                    Episode(sim.kind, sim.text(cfg.language), (*sess, sim.shown), evs[-1])
                )
            continue
        ep = make_episode(catalog, sess or (evs[-2].item_id,), evs[-1], cfg.language, rng)
        if ep is not None:
            episodes.append(ep)
    plain = [EngineRequest(e.target.service, e.target.context, e.session, cfg.k) for e in episodes]
    crits = [parse_critique(e.text) for e in episodes]
    verdicts = [catalog.apply(c, e.session) for c, e in zip(crits, episodes, strict=True)]
    steered = [
        replace(r, allowed=v.allowed, bonus=v.steer) for r, v in zip(plain, verdicts, strict=True)
    ]
    runs: dict[str, list[EngineRequest]] = {"without critique": plain, "with critique": steered}
    if engine.steer is not None:  # the learned steer: with the hard part, and alone
        runs[LEARNED] = [
            replace(r, critique=e.text) for r, e in zip(steered, episodes, strict=True)
        ]
        runs[LEARNED_ONLY] = [
            replace(r, critique=e.text) for r, e in zip(plain, episodes, strict=True)
        ]
    acc = {n: Accumulator() for n in runs}
    per_kind: dict[str, dict[str, Accumulator]] = {}
    returned = dict.fromkeys(runs, 0)
    violating = dict.fromkeys(runs, 0)
    total = len(episodes)
    for s in range(0, total, cfg.batch):
        sl = slice(s, s + cfg.batch)
        outs = {n: engine.recommend(reqs[sl]) for n, reqs in runs.items()}
        for j, (e, c) in enumerate(zip(episodes[sl], crits[sl], strict=True)):
            for name, out in outs.items():
                ids = [x.item_id for x in out[j]]
                acc[name].add(ids, e.target.item_id, e.target.service.value)
                per_kind.setdefault(e.kind, {n: Accumulator() for n in acc})[name].add(
                    ids, e.target.item_id, e.target.service.value
                )
                if name != "without critique":
                    returned[name] += len(ids)
                    violating[name] += sum(_violations(catalog, c, e.session, x) for x in ids)
        if on_step:
            on_step(min(s + cfg.batch, total), total)
    speed = _speed(engine, plain, runs.get(LEARNED, steered), cfg) if episodes else {}
    return {
        "episodes": total,
        "source": "simulator (critiques.jsonl)" if simulated is not None else "derived",
        "users": len(users),
        "language": cfg.language,
        "metrics": {n: a.result()["all"] for n, a in acc.items()},
        "per_kind": {
            k: {n: a.result()["all"] for n, a in v.items()} for k, v in sorted(per_kind.items())
        },
        "hard_constraints": {  # the product's rows (the learned steer alone has no mask)
            "returned_items": returned["with critique"],
            "violating_items": violating["with critique"],
            "violating_share": _share(violating["with critique"], returned["with critique"]),
            **(
                {
                    "learned": {
                        "returned_items": returned[LEARNED],
                        "violating_items": violating[LEARNED],
                    },
                    "learned_only": {
                        "returned_items": returned[LEARNED_ONLY],
                        "violating_items": violating[LEARNED_ONLY],
                        "violating_share": _share(violating[LEARNED_ONLY], returned[LEARNED_ONLY]),
                    },
                }
                if LEARNED in runs
                else {}
            ),
        },
        "learned_steer": engine.steer_reason
        or ("on" if engine.steer is not None else "none trained"),
        "speed": speed,
        "backend": engine.backend.name,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _share(a: int, b: int) -> float:
    return a / b if b else 0.0


def _speed(
    engine: Engine,
    plain: list[EngineRequest],
    steered: list[EngineRequest],
    cfg: CritiqueEvalConfig,
) -> dict[str, float]:
    """Rows/s at one batch size with and without critiques, interleaved (medians)."""
    n = min(cfg.batch, len(plain))
    a, b = plain[:n], steered[:n]
    engine.recommend(a)
    engine.recommend(b)
    ta, tb = [], []
    for _ in range(cfg.repeats):
        t = time.perf_counter()
        engine.recommend(a)
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        engine.recommend(b)
        tb.append(time.perf_counter() - t)
    ma, mb = statistics.median(ta), statistics.median(tb)
    return {
        "batch": n,
        "rows_per_s_without": n / ma,
        "rows_per_s_with": n / mb,
        "added_ms_per_batch": (mb - ma) * 1000,
        "ratio": ma / mb,
    }
