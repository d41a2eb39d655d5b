"""A seeded simulator of one population shopping on three services.

Generative process (everything drawn from one ``numpy.random.Generator``
seeded by ``SynthConfig.seed``, so a seed fixes the output bit for bit):

1. **Catalog** (:mod:`userlayer.tools.data.catalog`): grocery leaves shared by
   Samokat (more ready meals, snacks, drinks) and Kuper (more meat, fish,
   pantry, household, baby), marketplace leaves for Megamarket (electronics,
   home, clothing, kids, beauty, sports, garden). Each item has hidden
   attributes: diet class (meat/fish/other), kids/baby/pet tags, a health
   score, seasonality, a repurchase cycle for staples, and a popularity.
2. **Users** carry latent tastes shared across services: diet (omnivore,
   vegetarian: never meat or fish, pescatarian: never meat), parenthood
   (parents, and only parents, buy kids' goods on Megamarket and baby food and
   diapers on the grocery services), pet (dog/cat food only for owners),
   health orientation, price level, a favourite brand per top category with a
   loyalty strength, category affinities that drift linearly from a start to
   an end vector over the year (interest drift), a chronotype (preferred
   hours), a home geo cell, a preferred Kuper weekday and an activity level.
   Most users use two or three of the services.
3. **World**: each city has a daily weather chain (Markov, season-dependent).
4. **Sessions**: Samokat (quick commerce) has frequent small sessions whose
   hour follows the chronotype; Kuper has weekly planned sessions on the
   user's weekday; Megamarket has rare sessions, more at weekends and in the
   November sales and before New Year. Sessions are then thinned to the
   user's activity level (about ``events_per_user`` events on average).
5. **Modes** (the user's intent) are drawn per session from the service,
   daypart, weather and the user's health orientation: evenings, nights and
   bad weather make ``hungry`` likely on Samokat, health-oriented users have
   ``health`` sessions, Megamarket sessions are ``shopping``, planned grocery
   runs are ``unspecified``. The event's observed ``mode`` is the true mode
   with probability ``observed_mode_rate`` and ``unspecified`` otherwise (a
   request does not always state its intent); the true mode is ground truth.
6. **Items** in a session are drawn without replacement (Gumbel top-k) from a
   softmax over: category affinity at that date, mode boosts (hungry: ready
   meals, snacks, drinks; health: healthy items), health match, price-level
   match, brand loyalty, season (winter clothes in winter, garden and ice
   cream in summer) and weather (drinks in heat), popularity, and repurchase
   (a staple bought before is likely again once its cycle has passed, and
   unlikely just after). Diet, parenthood and pets are hard constraints.
7. **Events**: a session yields a few ``view`` events (browsing), then one
   ``purchase`` per basket item; some sessions leave an ``add_to_cart`` of
   an item never bought (abandoned cart); some Megamarket purchases are
   ``rate``d days later. Groceries have quantities 1-3.

Ground truth is saved beside the data (``truth/``): every user's tastes
(``users.json``), every item's hidden attributes (``items.parquet``) and every
event's true mode and session (``events.parquet``, row-aligned with the
dataset's ``events.parquet``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from userlayer.sdk.schemas import Mode, Service, Weather, daypart_of, season_of
from userlayer.tools.data.catalog import LANGUAGES, LEAVES, CatalogItem, Language, make_catalog
from userlayer.tools.data.critique_episodes import CritiqueEpisode, make_episodes, save_episodes
from userlayer.tools.data.format import Dataset, build_events
from userlayer.tools.exceptions import ToolsError

__all__ = ["SynthConfig", "SynthResult", "UserTaste", "synthesize"]

_MODES = (Mode.HUNGRY, Mode.SHOPPING, Mode.HEALTH, Mode.UNSPECIFIED)
_CITIES = ("msk", "spb", "kzn", "ekb")
_SEASONS = ("winter", "spring", "summer", "autumn")
_WEATHER_BY_SEASON: dict[str, tuple[tuple[Weather, ...], tuple[float, ...]]] = {
    "winter": (
        (Weather.SNOW, Weather.FROST, Weather.CLOUDY, Weather.CLEAR),
        (0.35, 0.25, 0.25, 0.15),
    ),
    "spring": ((Weather.RAIN, Weather.CLOUDY, Weather.CLEAR, Weather.SNOW), (0.3, 0.3, 0.35, 0.05)),
    "summer": ((Weather.CLEAR, Weather.HEAT, Weather.RAIN, Weather.CLOUDY), (0.4, 0.2, 0.25, 0.15)),
    "autumn": (
        (Weather.RAIN, Weather.CLOUDY, Weather.CLEAR, Weather.FROST),
        (0.4, 0.35, 0.15, 0.1),
    ),
}
_BAD_WEATHER = {Weather.RAIN, Weather.SNOW, Weather.FROST}
_MIN_SESSIONS = 4


@dataclass(frozen=True)
class SynthConfig:
    """Simulator settings; validated on creation."""

    users: int = 2000
    seed: int = 0
    events_per_user: float = 100.0
    start: str = "2025-03-01"
    days: int = 365
    items_samokat: int = 1300
    items_kuper: int = 1100
    items_megamarket: int = 1400
    observed_mode_rate: float = 0.5
    # share of users whose held-out last event comes with a critique episode
    # (critiques.jsonl; userlayer.tools.data.critique_episodes)
    critique_rate: float = 0.3
    # the public item text: "en", or "ru" as the three services show their catalogs
    # (the same items, prices and users either way; only title and category change)
    language: Language = "en"

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ToolsError(f"`users` should be positive, got {self.users}")
        if not 5 <= self.events_per_user <= 10_000:
            raise ToolsError(
                f"`events_per_user` should be in [5, 10000], got {self.events_per_user}"
            )
        if not 28 <= self.days <= 3650:
            raise ToolsError(f"`days` should be in [28, 3650], got {self.days}")
        for name in ("items_samokat", "items_kuper", "items_megamarket"):
            if getattr(self, name) < 100:
                raise ToolsError(f"`{name}` should be at least 100, got {getattr(self, name)}")
        if self.language not in LANGUAGES:
            raise ToolsError(f"`language` should be one of {LANGUAGES}, got {self.language!r}")
        if not 0.0 <= self.critique_rate <= 1.0:
            raise ToolsError(f"`critique_rate` should be in [0, 1], got {self.critique_rate}")
        if not 0.0 <= self.observed_mode_rate <= 1.0:
            raise ToolsError(
                f"`observed_mode_rate` should be in [0, 1], got {self.observed_mode_rate}"
            )
        try:
            datetime.fromisoformat(self.start)
        except ValueError as e:
            raise ToolsError(f"`start` should be an ISO date, got {self.start!r}") from e


@dataclass
class UserTaste:
    """One simulated user's latent tastes (ground truth)."""

    user_id: str
    services: list[str]
    diet: str  # omnivore | vegetarian | pescatarian
    parent: bool
    pet: str  # none | dog | cat
    health: float
    price_level: float  # -1 budget .. +1 premium
    loyalty: float
    favorite_brands: dict[str, str]
    affinity_start: dict[str, float]
    affinity_end: dict[str, float]
    chronotype: float  # hours added to the usual shopping hour
    home_cell: str
    kuper_weekday: int
    activity: float  # expected events over the period
    top_categories: list[str] = field(default_factory=list)


@dataclass
class SynthResult:
    """The generated dataset plus its ground truth."""

    dataset: Dataset
    users: list[UserTaste]
    catalog: list[CatalogItem]
    true_mode: list[str]  # row-aligned with dataset.events
    session_id: list[int]
    critiques: list[CritiqueEpisode] = field(default_factory=list)

    def save(self, directory: str | Path) -> Path:
        """Write the dataset, its critique episodes and ``truth/`` to ``directory``."""
        out = self.dataset.save(directory)
        if self.critiques:
            save_episodes(self.critiques, out)
        truth = out / "truth"
        truth.mkdir(exist_ok=True)
        (truth / "users.json").write_text(
            json.dumps([asdict(u) for u in self.users], indent=1), "utf-8"
        )
        pq.write_table(
            pa.table({"true_mode": self.true_mode, "session_id": self.session_id}),
            truth / "events.parquet",
        )
        pq.write_table(
            pa.table(
                {
                    "item_id": [c.item_id for c in self.catalog],
                    "leaf": [c.leaf for c in self.catalog],
                    "health": [c.health for c in self.catalog],
                    "tags": [sorted(c.tags) for c in self.catalog],
                    "cycle_days": [c.cycle_days for c in self.catalog],
                }
            ),
            truth / "items.parquet",
        )
        return out


class _ServiceItems:
    """Per-service item feature arrays the session sampler scores against."""

    def __init__(self, items: list[CatalogItem], rng: np.random.Generator) -> None:
        self.items = items
        self.ids = [c.item_id for c in items]
        n = len(items)
        self.top = [c.category[0] for c in items]
        self.brand = [c.brand for c in items]
        self.health = np.array([c.health for c in items])
        self.cycle = np.array([c.cycle_days for c in items], dtype=float)
        self.price = np.array([c.price for c in items])
        logp = np.log(self.price)
        self.price_z = np.zeros(n)
        for leaf in {c.leaf for c in items}:
            idx = np.array([i for i, c in enumerate(items) if c.leaf == leaf])
            z = (logp[idx] - logp[idx].mean()) / (logp[idx].std() + 1e-9)
            self.price_z[idx] = np.clip(z / 1.5, -1, 1)
        self.tag = {
            t: np.array([t in c.tags for c in items])
            for t in (
                "meat",
                "fish",
                "kids",
                "baby",
                "pet_dog",
                "pet_cat",
                "ready",
                "snack",
                "sweet",
                "drink",
                "healthy",
                "winter",
                "summer",
                "staple",
            )
        }
        # popularity: a Zipf-like fixed log-weight per item
        ranks = rng.permutation(n) + 1
        self.pop = -0.7 * np.log(ranks)
        hot = self.tag["ready"] | (np.array([c.leaf for c in items]) == _leaf_index("Hot Dishes"))
        self.mode_boost = {
            Mode.HUNGRY: 2.2 * hot
            + 1.2 * self.tag["snack"]
            + 0.8 * self.tag["drink"]
            + 0.4 * self.tag["sweet"]
            - 0.8 * self.tag["staple"],
            Mode.HEALTH: 2.0 * (self.health - 0.5)
            + 1.2 * self.tag["healthy"]
            - 1.2 * self.tag["sweet"],
            Mode.SHOPPING: np.zeros(n),
            Mode.UNSPECIFIED: 0.8 * self.tag["staple"],
        }
        self.season_boost = {
            "winter": 1.5 * self.tag["winter"] - 2.0 * self.tag["summer"],
            "summer": 1.5 * self.tag["summer"] - 2.0 * self.tag["winter"],
            "spring": -0.5 * self.tag["winter"],
            "autumn": 0.5 * self.tag["winter"] - 1.0 * self.tag["summer"],
        }
        ice = np.array(["Ice Cream" in c.category[-1] for c in items])
        self.weather_boost = {w: np.zeros(n) for w in Weather}
        self.weather_boost[Weather.HEAT] = 1.0 * self.tag["drink"] + 1.2 * ice
        self.weather_boost[Weather.FROST] = 0.6 * hot
        self.weather_boost[Weather.RAIN] = 0.3 * hot


def _clip(x: float, lo: float, hi: float) -> float:
    return min(max(float(x), lo), hi)


def _leaf_index(last: str) -> int:
    return next(i for i, leaf in enumerate(LEAVES) if leaf.path[-1] == last)


def _weather_table(
    rng: np.random.Generator, start: datetime, days: int
) -> dict[str, list[Weather]]:
    table: dict[str, list[Weather]] = {}
    for city in _CITIES:
        seq: list[Weather] = []
        for d in range(days):
            season = season_of(start + timedelta(days=d)).value
            options, probs = _WEATHER_BY_SEASON[season]
            if seq and seq[-1] in options and rng.random() < 0.6:
                seq.append(seq[-1])
            else:
                seq.append(options[rng.choice(len(options), p=probs)])
        table[city] = seq
    return table


def _make_user(
    rng: np.random.Generator,
    idx: int,
    cfg: SynthConfig,
    grocery_tops: list[str],
    market_tops: list[str],
    brands_by_top: dict[str, list[str]],
) -> UserTaste:
    services = [
        s.value
        for s, p in ((Service.SAMOKAT, 0.8), (Service.KUPER, 0.6), (Service.MEGAMARKET, 0.75))
        if rng.random() < p
    ]
    if not services:
        services = [list(Service)[rng.integers(3)].value]
    tops = grocery_tops + market_tops

    def affinity() -> dict[str, float]:
        a = np.concatenate(
            [
                rng.dirichlet(np.full(len(grocery_tops), 0.5)),
                rng.dirichlet(np.full(len(market_tops), 0.4)),
            ]
        )
        return {t: float(v) for t, v in zip(tops, a, strict=True)}

    start, end = affinity(), affinity()
    drift = float(rng.beta(1.2, 3.0))
    end = {t: (1 - drift) * start[t] + drift * end[t] for t in tops}
    top_sorted = sorted(tops, key=lambda t: -(start[t] + end[t]))
    return UserTaste(
        user_id=f"u{idx:06d}",
        services=services,
        diet=str(rng.choice(["omnivore", "vegetarian", "pescatarian"], p=[0.75, 0.15, 0.10])),
        parent=bool(rng.random() < 0.3),
        pet=str(rng.choice(["none", "dog", "cat"], p=[0.6, 0.2, 0.2])),
        health=float(rng.beta(2, 3)),
        price_level=float(np.clip(rng.normal(0, 0.5), -1, 1)),
        loyalty=float(rng.uniform(0.3, 2.5)),
        favorite_brands={t: str(rng.choice(brands_by_top[t])) for t in tops},
        affinity_start=start,
        affinity_end=end,
        chronotype=float(rng.normal(0, 2.0)),
        home_cell=f"{_CITIES[rng.choice(4, p=[0.45, 0.25, 0.15, 0.15])]}-{rng.integers(12):02d}",
        kuper_weekday=int(rng.choice(7, p=[0.08, 0.08, 0.1, 0.1, 0.14, 0.28, 0.22])),
        activity=float(
            np.clip(
                rng.lognormal(np.log(cfg.events_per_user) - 0.1, 0.45),
                0.25 * cfg.events_per_user,
                4 * cfg.events_per_user,
            )
        ),
        top_categories=top_sorted[:3],
    )


@dataclass
class _Session:
    service: Service
    start: datetime
    expected_events: float


def _candidate_sessions(
    rng: np.random.Generator, u: UserTaste, t0: datetime, days: int
) -> list[_Session]:
    out: list[_Session] = []
    for d in range(days):
        day = t0 + timedelta(days=d)
        wd = day.weekday()
        if Service.SAMOKAT.value in u.services and rng.random() < 0.3:
            hour = _clip(rng.normal(19 + u.chronotype, 3.5), 0, 23.9)
            out.append(_Session(Service.SAMOKAT, day + timedelta(hours=hour), 3.2))
        if Service.KUPER.value in u.services and (
            (wd == u.kuper_weekday and rng.random() < 0.6) or rng.random() < 0.03
        ):
            hour = _clip(rng.normal(12 + u.chronotype / 2, 2.5), 7, 22)
            out.append(_Session(Service.KUPER, day + timedelta(hours=hour), 9.0))
        if Service.MEGAMARKET.value in u.services:
            rate = 0.07 * (1.5 if wd >= 5 else 1.0) * (2.0 if day.month in (11, 12) else 1.0)
            if rng.random() < rate:
                hour = _clip(rng.normal(20 + u.chronotype, 3.0), 0, 23.9)
                out.append(_Session(Service.MEGAMARKET, day + timedelta(hours=hour), 4.5))
    total = sum(s.expected_events for s in out)
    keep = min(1.0, u.activity / max(total, 1e-9))
    kept = [s for s in out if rng.random() < keep]
    if len(kept) < _MIN_SESSIONS <= len(out):  # every user has a history to learn from
        picks = sorted(rng.choice(len(out), size=_MIN_SESSIONS, replace=False))
        kept = [out[i] for i in picks]
    return kept


def _session_mode(rng: np.random.Generator, u: UserTaste, s: _Session, weather: Weather) -> Mode:
    dp = daypart_of(s.start).value
    if s.service is Service.SAMOKAT:
        logits = [
            1.0 + 1.5 * (dp in ("evening", "night")) + 1.0 * (weather in _BAD_WEATHER),
            -3.0,
            3.0 * u.health - 0.6 + 0.8 * (dp == "morning"),
            1.0,
        ]
    elif s.service is Service.KUPER:
        logits = [-1.5, -3.0, 3.0 * u.health - 1.0, 2.0]
    else:
        logits = [-4.0, 2.5, 2.5 * u.health - 1.5, 0.0]
    p = np.exp(np.array(logits) - max(logits))
    return _MODES[rng.choice(4, p=p / p.sum())]


def synthesize(cfg: SynthConfig, on_user: Callable[[int], None] | None = None) -> SynthResult:
    """Run the simulator (see the module docstring for the generative process).

    Args:
        cfg: the simulator settings.
        on_user: called with the number of users done after each user (progress).
    """
    rng = np.random.default_rng(cfg.seed)
    t0 = datetime.fromisoformat(cfg.start).replace(tzinfo=UTC)
    catalog = make_catalog(
        rng,
        {
            Service.SAMOKAT: cfg.items_samokat,
            Service.KUPER: cfg.items_kuper,
            Service.MEGAMARKET: cfg.items_megamarket,
        },
    )
    per_service = {s: _ServiceItems([c for c in catalog if c.service is s], rng) for s in Service}
    grocery_tops = sorted({c.category[0] for c in catalog if c.service is not Service.MEGAMARKET})
    market_tops = sorted({c.category[0] for c in catalog if c.service is Service.MEGAMARKET})
    brands_by_top: dict[str, list[str]] = {}
    for c in catalog:
        brands_by_top.setdefault(c.category[0], [])
        if c.brand not in brands_by_top[c.category[0]]:
            brands_by_top[c.category[0]].append(c.brand)
    weather = _weather_table(rng, t0, cfg.days)

    cols: dict[str, list[Any]] = {
        k: []
        for k in (
            "user_id",
            "service",
            "item_id",
            "action",
            "timestamp",
            "quantity",
            "price",
            "mode",
            "daypart",
            "weekday",
            "season",
            "weather",
            "geo_cell",
        )
    }
    true_mode: list[str] = []
    session_ids: list[int] = []
    users: list[UserTaste] = []
    n_sessions = 0
    for idx in range(cfg.users):
        u = _make_user(rng, idx, cfg, grocery_tops, market_tops, brands_by_top)
        users.append(u)
        city = u.home_cell.split("-")[0]
        static = {s: _static_scores(u, per_service[s]) for s in Service if s.value in u.services}
        last_bought = {svc: np.full(len(per_service[svc].ids), -np.inf) for svc in Service}
        for s in _candidate_sessions(rng, u, t0, cfg.days):
            items = per_service[s.service]
            day = (s.start - t0).days
            w = weather[city][day]
            mode = _session_mode(rng, u, s, w)
            frac = day / cfg.days
            start_scores, end_scores, forbidden = static[s.service]
            scores = (
                start_scores * (1 - frac)
                + end_scores * frac
                + forbidden
                + items.mode_boost[mode]
                + items.season_boost[season_of(s.start).value]
                + items.weather_boost[w]
            )
            last = last_bought[s.service]
            due = (items.cycle > 0) & (last > -np.inf)
            scores = scores + np.where(
                due, np.where(day - last >= 0.8 * items.cycle, 2.0, -1.5), 0.0
            )
            basket, views, abandoned = _basket_sizes(rng, s.service, mode)
            gumbel = rng.gumbel(size=len(scores))
            k = basket + views + abandoned
            noisy = -(scores + gumbel)
            top = np.argpartition(noisy, k)[:k]
            chosen = top[np.argsort(noisy[top])]
            viewed, bought = chosen[basket : basket + views], chosen[:basket]
            cart_only = chosen[basket + views :]
            cell = u.home_cell if rng.random() < 0.85 else f"{city}-{rng.integers(12):02d}"
            observed = mode if rng.random() < cfg.observed_mode_rate else Mode.UNSPECIFIED
            t = s.start
            acts = (
                [(int(i), "view") for i in viewed]
                + [(int(i), "add_to_cart") for i in cart_only]
                + [(int(i), "purchase") for i in bought]
            )
            for i, action in acts:
                t += timedelta(seconds=float(rng.uniform(20, 120)))
                qty = (
                    int(rng.integers(1, 4))
                    if (s.service is not Service.MEGAMARKET and action == "purchase")
                    else 1
                )
                _append(cols, u.user_id, s.service, items, i, action, t, qty, observed, w, cell)
                true_mode.append(mode.value)
                session_ids.append(n_sessions)
                if action == "purchase":
                    last_bought[s.service][i] = day
            if s.service is Service.MEGAMARKET and len(bought) and rng.random() < 0.15:
                i = int(bought[0])
                tr = t + timedelta(days=float(rng.uniform(3, 10)))
                if (tr - t0).days < cfg.days:
                    _append(
                        cols,
                        u.user_id,
                        s.service,
                        items,
                        i,
                        "rate",
                        tr,
                        1,
                        Mode.UNSPECIFIED,
                        weather[city][(tr - t0).days],
                        u.home_cell,
                    )
                    true_mode.append(Mode.UNSPECIFIED.value)
                    session_ids.append(n_sessions)
            n_sessions += 1
        if on_user is not None:
            on_user(idx + 1)

    # the events are sorted by (user, time) inside build_events; keep truth aligned
    order = np.lexsort(
        (np.arange(len(true_mode)), np.asarray(cols["timestamp"]), np.asarray(cols["user_id"]))
    )
    cols = {k: [v[i] for i in order] for k, v in cols.items()}
    true_mode = [true_mode[i] for i in order]
    session_ids = [session_ids[i] for i in order]
    events = build_events(cols, "synthetic events")
    text = [c.text(cfg.language) for c in catalog]
    items_table = pa.table(
        {
            "item_id": [c.item_id for c in catalog],
            "service": [c.service.value for c in catalog],
            "title": [title for title, _ in text],
            "category": [list(cats) for _, cats in text],
            "brand": [c.brand for c in catalog],
            "price": [c.price for c in catalog],
        }
    )
    meta = {"source": "synthetic", "timestamps": "real", "config": asdict(cfg)}
    held_out: dict[str, tuple[str, datetime]] = {}  # rows are in (user, time) order
    sold: dict[str, float] = {}
    for user, item, ts, action in zip(
        cols["user_id"], cols["item_id"], cols["timestamp"], cols["action"], strict=True
    ):
        held_out[user] = (item, datetime.fromtimestamp(ts / 1000, UTC))
        if action == "purchase":
            sold[item] = sold.get(item, 0.0) + 1.0
    episodes = make_episodes(
        held_out, {u.user_id: u for u in users}, catalog, sold, cfg.critique_rate, cfg.seed
    )
    return SynthResult(
        Dataset(events, items_table, meta), users, catalog, true_mode, session_ids, episodes
    )


def _static_scores(u: UserTaste, items: _ServiceItems) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-user item scores at the start and the end of the period, and hard constraints.

    The third array is 0 for allowed items and a large negative number for
    forbidden ones (diet, parenthood, pets), so that mixing the first two for
    drift never multiplies an infinity by zero.
    """
    base = (
        items.pop
        + 1.2 * u.health * (items.health - 0.5)
        - 1.5 * np.abs(u.price_level - items.price_z)
        + u.loyalty
        * np.array(
            [u.favorite_brands.get(t) == b for t, b in zip(items.top, items.brand, strict=True)]
        )
    )
    forbidden = np.zeros(len(items.ids), dtype=bool)
    if u.diet == "vegetarian":
        forbidden |= items.tag["meat"] | items.tag["fish"]
    elif u.diet == "pescatarian":
        forbidden |= items.tag["meat"]
    if not u.parent:
        forbidden |= items.tag["kids"] | items.tag["baby"]
    if u.pet != "dog":
        forbidden |= items.tag["pet_dog"]
    if u.pet != "cat":
        forbidden |= items.tag["pet_cat"]

    def with_affinity(aff: dict[str, float]) -> np.ndarray:
        return base + 1.5 * np.log(np.array([aff[t] for t in items.top]) + 1e-3)

    return (
        with_affinity(u.affinity_start),
        with_affinity(u.affinity_end),
        np.where(forbidden, -1e9, 0.0),
    )


def _basket_sizes(rng: np.random.Generator, service: Service, mode: Mode) -> tuple[int, int, int]:
    if service is Service.SAMOKAT:
        basket = 1 + min(int(rng.poisson(0.8 if mode is Mode.HUNGRY else 1.5)), 5)
        views = int(rng.poisson(0.8))
    elif service is Service.KUPER:
        basket = 4 + min(int(rng.poisson(4.0)), 10)
        views = int(rng.poisson(1.0))
    else:
        basket = int(rng.choice([0, 1, 2], p=[0.3, 0.55, 0.15]))
        views = 2 + int(rng.poisson(1.5))
    abandoned = int(rng.random() < 0.15)
    return basket, views, abandoned


def _append(
    cols: dict[str, list[Any]],
    user: str,
    service: Service,
    items: _ServiceItems,
    i: int,
    action: str,
    t: datetime,
    qty: int,
    mode: Mode,
    weather: Weather,
    cell: str,
) -> None:
    cols["user_id"].append(user)
    cols["service"].append(service.value)
    cols["item_id"].append(items.ids[i])
    cols["action"].append(action)
    cols["timestamp"].append(int(t.timestamp() * 1000))
    cols["quantity"].append(qty)
    cols["price"].append(round(float(items.price[i]), 2) if action == "purchase" else None)
    cols["mode"].append(mode.value)
    cols["daypart"].append(daypart_of(t).value)
    cols["weekday"].append(t.weekday())
    cols["season"].append(season_of(t).value)
    cols["weather"].append(weather.value)
    cols["geo_cell"].append(cell)
