"""Critique episodes from the simulator's ground truth (a user rejects a shown item and says why).

For a share of users, the held-out last purchase (the target) becomes an
episode, as REGEN wrote critiques for adjacent items (Google, 2025), but
from the user's latent tastes rather than from observed differences:
a recommender showed the most popular item of the target's leaf category
that the user's truth rejects, the user said why, and the purchase that
followed (the target) satisfies what they said:

- a vegetarian (pescatarian) was shown meat or fish (meat), the most popular
  of the target's top category or else of the service: "без мяса" / "no
  meat" ("без рыбы" / "no fish"); the simulator never lets them buy it;
- a budget-minded user (price level below -0.2) was shown an item at least 5%
  dearer than the target: "подешевле" / "cheaper"; a premium one (above 0.3)
  an item at least 5% cheaper: "подороже" / "more expensive";
- a brand-loyal user (loyalty above 0.5) whose favourite brand the target is
  was shown another brand: "другой бренд" / "another brand".

One reason is drawn (uniformly among those that apply) from its own random
stream (``[seed, 7]``), so the events of a seed are the same with or without
episodes. Written as ``critiques.jsonl`` beside the dataset (format
``userlayer.critiques/1``, one episode per line).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from userlayer.tools.data.catalog import CatalogItem
from userlayer.tools.exceptions import ToolsError

__all__ = ["FORMAT", "CritiqueEpisode", "load_episodes", "make_episodes", "save_episodes"]

FORMAT = "userlayer.critiques/1"
FILE = "critiques.jsonl"
TEXTS = {
    "without meat": ("без мяса", "no meat"),
    "without fish": ("без рыбы", "no fish"),
    "cheaper": ("подешевле", "cheaper"),
    "pricier": ("подороже", "more expensive"),
    "brand": ("другой бренд", "another brand"),
}


@dataclass(frozen=True)
class CritiqueEpisode:
    """A shown item the user rejected, what they said (ru, en), and what they bought next."""

    user_id: str
    service: str
    timestamp: str  # the target's time (ISO); the rejection came just before it
    shown: str
    kind: str
    ru: str
    en: str
    target: str

    def text(self, language: str) -> str:
        """The critique in ``ru`` or ``en``."""
        return self.ru if language == "ru" else self.en


def make_episodes(
    last_purchase: dict[str, tuple[str, datetime]],
    tastes: dict[str, Any],
    catalog: list[CatalogItem],
    popularity: dict[str, float],
    rate: float,
    seed: int,
) -> list[CritiqueEpisode]:
    """Episodes for about ``rate`` of the users (see the module docstring).

    ``last_purchase``: user -> (item, time) of their held-out last purchase;
    ``tastes``: user -> their :class:`~userlayer.tools.data.synth.UserTaste`.
    """
    if not 0.0 <= rate <= 1.0:
        raise ToolsError(f"`critique_rate` should be in [0, 1], got {rate}")
    rng = np.random.default_rng([seed, 7])
    by_id = {c.item_id: c for c in catalog}
    # shelves: the target's leaf, its top category, its service
    shelf: dict[tuple[str, str], list[CatalogItem]] = defaultdict(list)
    for c in catalog:
        for key in (f"leaf {c.leaf}", f"top {c.category[0]}", "service"):
            shelf[(c.service.value, key)].append(c)
    for items in shelf.values():  # what a recommender shows first: the most popular
        items.sort(key=lambda c: -popularity.get(c.item_id, 0.0))
    out = []
    for user in sorted(last_purchase):
        if rng.random() >= rate:
            continue
        item, when = last_purchase[user]
        t, u = by_id.get(item), tastes.get(user)
        if t is None or u is None:
            continue
        svc = t.service.value
        reasons = _reasons(
            t,
            u,
            shelf[(svc, f"leaf {t.leaf}")],
            shelf[(svc, f"top {t.category[0]}")] + shelf[(svc, "service")],
        )
        if not reasons:
            continue
        kind, shown = reasons[int(rng.integers(len(reasons)))]
        ru, en = TEXTS[kind]
        out.append(
            CritiqueEpisode(user, t.service.value, when.isoformat(), shown, kind, ru, en, item)
        )
    return out


def _reasons(
    t: CatalogItem, u: Any, leaf: list[CatalogItem], wider: list[CatalogItem]
) -> list[tuple[str, str]]:
    """(kind, shown item) for each reason the user's truth gives to reject a shown item."""
    found: list[tuple[str, str]] = []

    def first(ok: Any, shelf: list[CatalogItem] = leaf) -> str | None:
        return next((c.item_id for c in shelf if c.item_id != t.item_id and ok(c)), None)

    if u.diet in ("vegetarian", "pescatarian") and "meat" not in t.tags:
        s = first(lambda c: "meat" in c.tags, wider)
        if s:
            found.append(("without meat", s))
    if u.diet == "vegetarian" and "fish" not in t.tags:
        s = first(lambda c: "fish" in c.tags, wider)
        if s:
            found.append(("without fish", s))
    if u.price_level < -0.2:
        s = first(lambda c: c.price >= 1.05 * t.price)
        if s:
            found.append(("cheaper", s))
    elif u.price_level > 0.3:
        s = first(lambda c: c.price <= 0.95 * t.price)
        if s:
            found.append(("pricier", s))
    if u.loyalty > 0.5 and u.favorite_brands.get(t.category[0]) == t.brand:
        s = first(lambda c: c.brand != t.brand)
        if s:
            found.append(("brand", s))
    return found


def save_episodes(episodes: list[CritiqueEpisode], directory: str | Path) -> Path:
    """Write ``critiques.jsonl`` (a format line, then one episode per line)."""
    p = Path(directory) / FILE
    lines = [json.dumps({"format": FORMAT})] + [
        json.dumps(asdict(e), ensure_ascii=False) for e in episodes
    ]
    p.write_text("\n".join(lines) + "\n", "utf-8")
    return p


def load_episodes(directory: str | Path) -> list[CritiqueEpisode] | None:
    """The episodes beside a dataset, or None if it has none.

    Raises:
        ToolsError: on another format or a malformed line (naming it).
    """
    p = Path(directory) / FILE
    if not p.exists():
        return None
    lines = [x for x in p.read_text("utf-8").splitlines() if x.strip()]
    try:
        head = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError as e:
        raise ToolsError(f"{p}: line 1 is not JSON ({e})") from e
    if head.get("format") != FORMAT:
        raise ToolsError(f"{p}: format {head.get('format')!r}, expected {FORMAT!r}")
    out = []
    for n, line in enumerate(lines[1:], start=2):
        try:
            d = json.loads(line)
            ep = CritiqueEpisode(**{k: str(d[k]) for k in CritiqueEpisode.__dataclass_fields__})
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ToolsError(f"{p}: line {n} is not a critique episode ({e})") from e
        if ep.kind not in TEXTS:
            raise ToolsError(f"{p}: line {n}: unknown kind {ep.kind!r}")
        out.append(ep)
    return out
