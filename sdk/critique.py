"""Critiques: a user's short reaction in Russian or English, understood as constraints.

"подешевле", "без мяса", "другой бренд", "for a kid", "no sugar": a critique
is part of one request (it is never stored). :func:`parse_critique` turns it
into a :class:`Critique`:

- **hard constraints** that must hold for every returned item: a price
  ceiling (or floor) relative to the session's last priced item (the one the
  user is reacting to), brands excluded (that item's brand), and concepts
  excluded ("без мяса": meat, fish, sugar, dairy, gluten, alcohol, nuts, or
  any other word, matched as a word prefix in the item's title, category and
  brand). :class:`CatalogIndex` turns them into an allowed-items mask that
  constrained decoding applies, so a violating item can never be returned.
  An item whose price is unknown cannot be shown to satisfy a price
  constraint and is excluded by it.
- **soft steers** ("полезнее", "для ребёнка", "побольше"): preferences that
  rank, not filter; see :meth:`CatalogIndex.steer`.

Parsing is rules over a small bilingual lexicon (no model, no download): it
works wherever the SDK runs. What it cannot use is reported in ``flags``
(unknown language, contradictory parts, nothing understood) and the request
goes on without it; nothing here raises on odd text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from userlayer.sdk.api import MAX_CRITIQUE
from userlayer.sdk.exceptions import CatalogError

__all__ = [
    "CATALOG_FILE",
    "CATALOG_FORMAT",
    "CONCEPTS",
    "MAX_CRITIQUE",
    "CatalogIndex",
    "Critique",
    "ItemAttributes",
    "Verdict",
    "catalog_document",
    "load_catalog",
    "parse_critique",
]

CATALOG_FILE = "catalog.json"  # in a model directory: the items' public attributes
CATALOG_FORMAT = "userlayer.catalog/1"


@dataclass(frozen=True)
class _Concept:
    triggers: tuple[str, ...]  # stems in a critique that name it (ru and en)
    words: tuple[str, ...]  # word prefixes in an item's text that mean it
    exempt: tuple[str, ...] = ()  # phrases in an item's text that say it is free of it
    ru: str = ""


CONCEPTS: dict[str, _Concept] = {
    "meat": _Concept(
        ("мяс", "meat"),
        (
            "meat",
            "beef",
            "pork",
            "poultry",
            "chicken",
            "sausage",
            "ham",
            "bacon",
            "turkey",
            "lamb",
            "veal",
            "мяс",
            "говя",
            "свин",
            "куриц",
            "курин",
            "колбас",
            "ветчин",
            "бекон",
            "индейк",
            "сосис",
            "фарш",
            "баран",
            "телят",
        ),
        ("vegan", "vegetarian", "веган", "вегетариан"),
        "мяса",
    ),
    "fish": _Concept(
        ("рыб", "морепрод", "fish", "seafood"),
        (
            "fish",
            "salmon",
            "tuna",
            "herring",
            "cod",
            "shrimp",
            "seafood",
            "рыб",
            "лосос",
            "сельд",
            "тунец",
            "тунц",
            "кревет",
            "треск",
            "морепрод",
        ),
        ru="рыбы",
    ),
    "sugar": _Concept(
        ("сахар", "сладк", "sugar", "sweet"),
        (
            "sugar",
            "sweet",
            "candy",
            "candies",
            "chocolate",
            "caramel",
            "сахар",
            "сладк",
            "конфет",
            "шоколад",
            "карамел",
        ),
        ("no sugar", "sugar free", "sugar-free", "без сахара"),
        "сахара",
    ),
    "dairy": _Concept(
        ("молок", "молоч", "лактоз", "milk", "dairy", "lactose"),
        (
            "milk",
            "dairy",
            "cheese",
            "yogurt",
            "kefir",
            "cream",
            "butter",
            "curd",
            "молок",
            "молоч",
            "сыр",
            "йогурт",
            "кефир",
            "сливк",
            "творог",
        ),
        ("lactose free", "lactose-free", "без лактозы", "plant milk", "oat milk"),
        "молочного",
    ),
    "gluten": _Concept(
        ("глютен", "gluten"),
        ("gluten", "wheat", "bread", "pasta", "flour", "глютен", "пшен", "хлеб", "макарон", "мук"),
        ("gluten free", "gluten-free", "без глютена"),
        "глютена",
    ),
    "alcohol": _Concept(
        ("алкогол", "спирт", "alcohol"),
        ("alcohol", "beer", "wine", "vodka", "алкогол", "пиво", "вино", "водк"),
        ("alcohol free", "non-alcoholic", "безалкогол"),
        "алкоголя",
    ),
    "nuts": _Concept(
        ("орех", "nut"),
        ("nut", "peanut", "almond", "hazelnut", "орех", "арахис", "миндал", "фундук"),
        ru="орехов",
    ),
}

_LOWER = ("дешевл", "подешевл", "бюджетн", "эконом", "недорог", "cheaper", "cheap", "budget")
_LOWER_PHRASES = (
    "less expensive",
    "lower price",
    "не так дорого",
    "не дорого",
    "не слишком дорого",
    "not expensive",
    "not so expensive",
    "not too expensive",
)
_HIGHER = ("дороже", "подороже", "премиум", "pricier", "premium")
_HIGHER_PHRASES = ("more expensive", "higher price", "better quality", "получше")
_BRAND = (
    "другой бренд",
    "другого бренда",
    "другую марку",
    "другой марки",
    "другого производител",
    "другой фирм",
    "не этот бренд",
    "another brand",
    "different brand",
    "other brand",
    "not this brand",
)
_STEERS: dict[str, tuple[str, ...]] = {
    "healthier": ("полезн", "здоров", "диетич", "пп ", "healthier", "healthy", "diet"),
    "kids": ("ребён", "ребен", "детск", "детей", "малыш", "child", "kid", "baby"),
    "bigger": ("побольше", "больше", "крупн", "семейн", "bigger", "larger", "family"),
    "smaller": ("поменьше", "меньше", "маленьк", "smaller", "mini"),
}
_NEGATIONS = (
    r"не хочу",
    r"не надо",
    r"не нужно",
    r"без",
    r"не",
    r"don'?t want",
    r"no",
    r"without",
    r"not",
    r"free of",
    r"nothing with",
)
_STOP = {"a", "an", "the", "any", "more", "please", "пожалуйста", "всяких", "никаких", "и", "and"}
_FILLER = {
    "this",
    "that",
    "этот",
    "эту",
    "это",
    "этого",
    "этих",
    "так",
    "такой",
    "такого",
    "so",
    "too",
    "very",
    "очень",
    "хочу",
}
_WORD = re.compile(r"[\w\-]+", re.UNICODE)


@dataclass(frozen=True)
class Critique:
    """What a critique asks; see the module docstring."""

    text: str
    language: str  # "ru", "en" or "unknown"
    price: str | None = None  # "lower" or "higher" than the session's last priced item
    other_brand: bool = False
    without: tuple[str, ...] = ()  # concept names (CONCEPTS) or other word stems
    steer: tuple[str, ...] = ()  # soft: "healthier", "kids", "bigger", "smaller"
    flags: tuple[str, ...] = ()

    @property
    def hard(self) -> bool:
        """Whether it holds a hard constraint."""
        return bool(self.price or self.other_brand or self.without)

    @property
    def understood(self) -> bool:
        """Whether anything of it is used."""
        return self.hard or bool(self.steer)


def _language(text: str) -> str:
    cyr = len(re.findall(r"[а-яё]", text))
    lat = len(re.findall(r"[a-z]", text))
    if not cyr and not lat:
        return "unknown"
    return "ru" if cyr >= lat else "en"


def _stem(word: str, lang: str) -> str:
    """A crude prefix stem: Russian loses its ending, English its plural."""
    if lang == "ru" or re.search(r"[а-яё]", word):
        return word[: max(4, len(word) - 2)] if len(word) > 4 else word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("es") and len(word) > 4:
        return word[:-2]
    if word.endswith("s") and len(word) > 3:
        return word[:-1]
    return word


def _concept(word: str) -> str | None:
    for name, c in CONCEPTS.items():
        if any(word.startswith(t) for t in c.triggers):
            return name
    return None


def parse_critique(text: str) -> Critique:
    """Understand a critique (see the module docstring); never raises on odd text.

    Raises:
        ValueError: only if ``text`` is longer than :data:`MAX_CRITIQUE`
            (the API refuses it before; a caller of this function must too).
    """
    if len(text) > MAX_CRITIQUE:
        raise ValueError(f"a critique has at most {MAX_CRITIQUE} characters, got {len(text)}")
    low = " ".join(text.lower().replace("ё", "е").split())
    lang = _language(low)
    if lang == "unknown":
        return Critique(text, lang, flags=("unknown language: ignored",) if low else ())
    flags: list[str] = []
    padded = f" {low} "
    lower = any(p in padded for p in _LOWER_PHRASES) or any(
        w.startswith(s) for w in _WORD.findall(low) for s in _LOWER
    )
    higher = not any(p in padded for p in _LOWER_PHRASES) and (
        any(p in padded for p in _HIGHER_PHRASES)
        or any(w.startswith(s) for w in _WORD.findall(low) for s in _HIGHER)
    )
    price = None
    if lower and higher:
        flags.append("contradictory: cheaper and more expensive; price ignored")
    elif lower or higher:
        price = "lower" if lower else "higher"
    other_brand = any(p in padded for p in _BRAND)
    without: list[str] = []
    neg = "|".join(_NEGATIONS)
    for m in re.finditer(rf"(?:^|\s)(?:{neg})\s+([\w\-]+)(?:\s+([\w\-]+))?", low):
        words = [w for w in m.groups() if w and w not in _STOP and w not in _FILLER]
        if not words:
            continue
        w = words[0]
        if any(w.startswith(s) for s in ("дорог", "expensive", "бренд", "brand", "марк")):
            continue  # "не дорого", "not this brand": price and brand, handled above
        name = _concept(w)
        without.append(name if name else _stem(w, lang))
    for m in re.finditer(r"([\w]+)-free\b", low):
        name = _concept(m.group(1))
        without.append(name if name else _stem(m.group(1), lang))
    steer = [s for s, keys in _STEERS.items() if any(k in padded for k in keys)]
    if "bigger" in steer and "smaller" in steer:
        flags.append("contradictory: bigger and smaller; size ignored")
        steer = [s for s in steer if s not in ("bigger", "smaller")]
    crit = Critique(
        text,
        lang,
        price,
        other_brand,
        tuple(dict.fromkeys(without)),
        tuple(steer),
        tuple(flags),
    )
    if not crit.understood and not flags:
        crit = Critique(text, lang, flags=("not understood: ignored",))
    return crit


# -- the catalog side


@dataclass(frozen=True)
class ItemAttributes:
    """What critiques read of an item (public catalog data)."""

    title: str = ""
    category: tuple[str, ...] = ()
    brand: str = ""
    price: float | None = None


@dataclass(frozen=True)
class Verdict:
    """A critique applied to one request: the allowed items and what was applied."""

    allowed: np.ndarray | None  # bool over the index's items; None: no hard constraint
    applied: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    steer: np.ndarray | None = None  # additive log-score bonus per item (soft steers)


def _norm(text: str) -> str:
    return " ".join(_WORD.findall(text.lower().replace("ё", "е")))


@dataclass
class CatalogIndex:
    """Items' attributes as arrays, in a fixed item order, for critique masks."""

    items: Sequence[str]
    attributes: Mapping[str, ItemAttributes]
    _pos: dict[str, int] = field(init=False, repr=False)
    _words: dict[str, np.ndarray] = field(init=False, repr=False)
    _cache: dict[str, np.ndarray] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._pos = {it: i for i, it in enumerate(self.items)}
        n = len(self.items)
        blank = ItemAttributes()
        attrs = [self.attributes.get(it, blank) for it in self.items]
        self.price = np.array(
            [np.nan if a.price is None else float(a.price) for a in attrs], dtype=np.float64
        )
        self.brand = np.array([a.brand.strip().lower() for a in attrs], dtype=object)
        self.text = [_norm(" ".join([a.title, *a.category, a.brand])) for a in attrs]
        index: dict[str, list[int]] = {}
        for i, t in enumerate(self.text):
            for w in set(t.split()):
                index.setdefault(w, []).append(i)
        self._words = {w: np.array(ix, dtype=np.int64) for w, ix in index.items()}
        self._n = n
        self._size = np.array([_pack_size(a.title) for a in attrs], dtype=np.float64)

    @classmethod
    def from_json(
        cls, items: Sequence[str], doc: Mapping[str, Mapping[str, object]]
    ) -> CatalogIndex:
        """From ``catalog.json``'s mapping item id -> {title, category, brand, price}."""
        attrs = {}
        for it, a in doc.items():
            price = a.get("price")
            cat = a.get("category") or ()
            attrs[it] = ItemAttributes(
                str(a.get("title") or ""),
                tuple(str(c) for c in cat) if isinstance(cat, (list, tuple)) else (),
                str(a.get("brand") or ""),
                float(price) if isinstance(price, (int, float)) else None,
            )
        return cls(items, attrs)

    def index_of(self, item: str) -> int:
        """The item's position in :attr:`items` (-1: not in the catalog)."""
        return self._pos.get(item, -1)

    def pack_size(self, i: int) -> float:
        """The pack size read from item ``i``'s title (g, ml; pieces as 100), NaN if none."""
        return float(self._size[i])

    def _with_prefix(self, prefix: str) -> np.ndarray:
        """Indices of the items with a word starting with ``prefix`` (cached)."""
        got = self._cache.get(prefix)
        if got is None:
            parts = [ix for w, ix in self._words.items() if w.startswith(prefix)]
            got = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
            self._cache[prefix] = got
        return got

    def mentions(self, concept_or_stem: str) -> np.ndarray:
        """Items whose text has the concept (or the stem) as a word prefix, minus exemptions."""
        key = f"\0{concept_or_stem}"
        got = self._cache.get(key)
        if got is not None:
            return got
        hit = np.zeros(self._n, dtype=bool)
        c = CONCEPTS.get(concept_or_stem)
        for w in c.words if c else (concept_or_stem,):
            hit[self._with_prefix(w)] = True
        if c and c.exempt:
            phrases = [_norm(x) for x in c.exempt]
            hit &= ~np.array([any(e in t for e in phrases) for t in self.text], dtype=bool)
        self._cache[key] = hit
        return hit

    def apply(self, critique: Critique, session: Sequence[str]) -> Verdict:
        """The allowed-items mask and the soft steer of a critique for a request's session."""
        flags = list(critique.flags)
        applied: list[str] = []
        allowed = np.ones(self._n, dtype=bool)
        ref = [self._pos[i] for i in session if i in self._pos]
        if critique.price:
            priced = [i for i in ref if not np.isnan(self.price[i])]
            if not priced:
                flags.append("price: no priced item in the session to compare with; ignored")
            else:
                p = float(self.price[priced[-1]])
                with np.errstate(invalid="ignore"):
                    ok = self.price < p if critique.price == "lower" else self.price > p
                allowed &= ok  # NaN (unknown price) compares false: excluded
                applied.append(f"price {'<' if critique.price == 'lower' else '>'} {p:g}")
        if critique.other_brand:
            branded = [i for i in ref if self.brand[i]]
            if not branded:
                flags.append("brand: no branded item in the session; ignored")
            else:
                b = str(self.brand[branded[-1]])
                allowed &= self.brand != b
                applied.append(f"brand is not {b!r}")
        for w in critique.without:
            allowed &= ~self.mentions(w)
            applied.append(f"without {w}")
        steer = self.steer(critique.steer) if critique.steer else None
        return Verdict(allowed if applied else None, tuple(applied), tuple(flags), steer)

    def steer(self, steers: Iterable[str]) -> np.ndarray:
        """A log-score bonus per item for soft preferences (0 where it does not apply).

        "healthier": items described as light, organic, whole grain, no sugar,
        vegetables, fruit; "kids": items for children; "bigger"/"smaller": the
        pack size against the median of its category words (titles' "400 g",
        "1 l", "2 kg", "6 pcs").
        """
        bonus = np.zeros(self._n, dtype=np.float64)
        for s in steers:
            if s == "healthier":
                for w in _HEALTHY:
                    bonus[self._with_prefix(w)] += 1.0
                bonus[self.mentions("sugar")] -= 1.0
            elif s == "kids":
                for w in _KIDS:
                    bonus[self._with_prefix(w)] += 1.0
            elif s in ("bigger", "smaller"):
                known = ~np.isnan(self._size)
                z = np.zeros(self._n)
                if known.any():
                    med = np.median(self._size[known])
                    z[known] = np.log(self._size[known] / med)
                bonus += z if s == "bigger" else -z
        return np.clip(bonus, -2.0, 2.0)


_HEALTHY = (
    "light",
    "organic",
    "whole",
    "grain",
    "lean",
    "vegetable",
    "fruit",
    "salad",
    "greens",
    "healthy",
    "био",
    "органи",
    "цельнозерн",
    "овощ",
    "фрукт",
    "салат",
    "полезн",
    "легк",
)
_KIDS = ("kid", "child", "baby", "детск", "дет", "малыш", "ребен")
_UNITS = {
    "g": 1.0,
    "г": 1.0,
    "kg": 1000.0,
    "кг": 1000.0,
    "ml": 1.0,
    "мл": 1.0,
    "l": 1000.0,
    "л": 1000.0,
    "pcs": 100.0,
    "pc": 100.0,
    "шт": 100.0,
}


def _pack_size(title: str) -> float:
    m = re.search(r"(\d+(?:[.,]\d+)?)\s*(kg|кг|ml|мл|g|г|l|л|pcs|pc|шт)\b", title.lower())
    if not m:
        return float("nan")
    return float(m.group(1).replace(",", ".")) * _UNITS[m.group(2)]


def catalog_document(attributes: Mapping[str, ItemAttributes]) -> dict[str, object]:
    """The JSON document of ``catalog.json`` (see :func:`load_catalog`)."""
    return {
        "format": CATALOG_FORMAT,
        "items": {
            it: {"title": a.title, "category": list(a.category), "brand": a.brand, "price": a.price}
            for it, a in sorted(attributes.items())
        },
    }


def load_catalog(model_dir: str | Path, items: Sequence[str]) -> CatalogIndex | None:
    """The catalog index of a model directory's ``catalog.json`` (None when it has none).

    Raises:
        CatalogError: the file is not a userlayer catalog (names the path).
    """
    path = Path(model_dir) / CATALOG_FILE
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CatalogError(f"{path}: unreadable catalog ({e})") from e
    entries = doc.get("items") if isinstance(doc, dict) else None
    if doc.get("format") != CATALOG_FORMAT or not isinstance(entries, dict):
        raise CatalogError(f"{path}: not a userlayer catalog (format {CATALOG_FORMAT!r})")
    bad = [k for k, v in entries.items() if not isinstance(v, dict)]
    if bad:
        raise CatalogError(f"{path}: item {bad[0]!r} is not an object of attributes")
    return CatalogIndex.from_json(items, entries)
