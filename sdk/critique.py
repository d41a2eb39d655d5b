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

import bisect
import json
import math
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
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
MAX_CATALOG_BYTES = 1 << 30


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
            "ягн",
            "телят",
            # dishes whose name says meat without the word
            "pelmeni",
            "plov",
            "lasagn",
            "stroganoff",
            "shawarma",
            "pepperoni",
            "salami",
            "пельмен",
            "плов",
            "лазань",
            "бефстроганов",
            "шаурм",
            "пепперони",
            "салями",
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
            "сырник",
            "syrniki",
            "пломбир",
            "plombir",
            "мороженое",
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
        (
            "nut",
            "peanut",
            "almond",
            "hazelnut",
            "walnut",
            "pistachio",
            "cashew",
            "pecan",
            "macadamia",
            "praline",
            "орех",
            "арахис",
            "миндал",
            "фундук",
            "фисташ",
            "кешью",
            "пекан",
            "макадами",
            "пралине",
        ),
        ru="орехов",
    ),
}

# price words: (stem, direction); a negation just before inverts a comparative
# ("не дороже" = no dearer = cheaper), while "дорого"/"expensive" alone is a complaint
# (cheaper) whatever precedes it ("не дорого", "too expensive", "not expensive")
_CHEAPER = ("дешевл", "подешевл", "бюджетн", "эконом", "недорог", "cheaper", "cheap", "budget")
_DEARER = ("дороже", "подороже", "премиум", "pricier", "premium", "dearer", "upscale")
_COMPLAINT = ("дорого", "дорогой", "дорогое", "дорогая", "expensive", "overpriced")
_MORE = ("more", "более", "higher", "выше", "better", "получше", "лучше")
_NEG = {"не", "not", "no", "нет", "never", "less", "dont", "don't", "doesn't", "isn't"}
_BRAND_WORDS = ("бренд", "марк", "производител", "фирм", "brand", "make", "maker", "label")
_OTHER = ("друг", "другой", "иной", "another", "different", "other", "new")
_STEERS: dict[str, tuple[str, ...]] = {
    "healthier": ("полезн", "здоров", "диетич", "healthier", "healthy", "diet"),
    "kids": ("ребён", "ребен", "детск", "детей", "малыш", "child", "kids", "baby", "toddler"),
    "bigger": ("побольше", "больше", "крупн", "семейн", "bigger", "larger", "family"),
    "smaller": ("поменьше", "меньше", "маленьк", "smaller", "mini"),
}
_STEER_WORDS = {"kid": "kids"}  # whole words only ("kid", not "kidney")
# "without X": the words that open it, and what may stand between it and X
_WITHOUT = {"без", "without", "no", "not", "не", "free", "nothing", "exclude", "исключи"}
_WITHOUT_PAIRS = {("don't", "want"), ("dont", "want"), ("не", "хочу"), ("не", "надо")}
_FILLER = {
    "this", "that", "these", "any", "the", "a", "an", "of", "with", "so", "too", "very",
    "like", "love", "want", "need", "more", "этот", "эту", "это", "этого", "этих", "так",
    "такой", "такого", "очень", "хочу", "надо", "нужно", "люблю", "всяких", "никаких",
    "i", "я", "мне", "please", "пожалуйста",
}  # fmt: skip
_AND = {"и", "или", "ни", "and", "or", "nor"}
_STOP = {
    "but", "но", "а", "for", "для", "please", "пожалуйста", "thanks", "thank", "спасибо",
    "instead", "вместо", "just", "только", "something", "что-нибудь", "что-то",
}  # fmt: skip
MAX_WITHOUT = 5  # "without" terms read from one critique (the rest is flagged)
_TOKEN = re.compile(r"[\w\-']+|[,.;:!?()]", re.UNICODE)
_WORD = re.compile(r"[\w\-]+", re.UNICODE)
_RU_ENDINGS = (
    "ами", "ями", "ого", "его", "ому", "ему", "ыми", "ими", "ов", "ев", "ей", "ой", "ом",
    "ем", "ах", "ях", "ую", "юю", "ая", "яя", "ое", "ее", "ые", "ие", "ым", "им", "а", "я",
    "у", "ю", "ы", "и", "е", "о", "ь", "й",
)  # fmt: skip


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


def _stem(word: str) -> str:
    """A crude prefix stem: Russian loses a case ending, English its plural (>= 3 letters)."""
    if re.search(r"[а-я]", word):
        for end in _RU_ENDINGS:
            if word.endswith(end) and len(word) - len(end) >= 3:
                return word[: -len(end)]
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("es") and len(word) > 4 and word[-3] in "sxz":
        return word[:-2]
    if word.endswith("s") and len(word) > 3 and not word.endswith("ss"):
        return word[:-1]
    return word


def _concept(word: str) -> str | None:
    for name, c in CONCEPTS.items():
        if any(word.startswith(t) for t in c.triggers):
            return name
    return None


def _price(tokens: list[str]) -> tuple[bool, bool]:
    """Whether the critique asks for cheaper, and for dearer (token scan)."""
    lower = higher = False
    for i, t in enumerate(tokens):
        before = tokens[max(0, i - 2) : i]
        negated = any(b in _NEG for b in before)
        if t in _COMPLAINT or t.startswith("недорог"):
            if any(b in _MORE for b in before) and not negated:
                higher = True  # "more expensive", "более дорогой"
            else:
                lower = True  # "дорого", "too expensive", "not expensive", "не более дорогой"
        elif any(t.startswith(s) for s in _CHEAPER):
            lower, higher = (lower, True) if negated else (True, higher)
        elif any(t.startswith(s) for s in _DEARER):
            lower, higher = (True, higher) if negated else (lower, True)
        elif (
            t in ("lower", "ниже")
            and i + 1 < len(tokens)
            and tokens[i + 1].startswith(("price", "цен"))
        ):
            lower = True
    return lower, higher


def _other_brand(tokens: list[str]) -> bool:
    for i, t in enumerate(tokens):
        if any(t.startswith(w) for w in _BRAND_WORDS):
            before = tokens[max(0, i - 3) : i]
            if any(b.startswith(_OTHER) for b in before) or ("не" in before or "not" in before):
                return True
    return False


def _without(tokens: list[str]) -> tuple[list[str], bool]:
    """The "without X" terms: concepts or word stems; and whether some were left out."""
    out: list[str] = []
    i, n = 0, len(tokens)
    while i < n:
        t = tokens[i]
        opens = t in _WITHOUT or (i + 1 < n and (t, tokens[i + 1]) in _WITHOUT_PAIRS)
        if t.endswith("-free") and len(t) > 5:  # "gluten-free"
            out.append(_concept(t[:-5]) or _stem(t[:-5]))
        if not opens:
            i += 1
            continue
        j = i + 1
        while j < n and tokens[j] not in ",.;:!?()" and tokens[j] not in _STOP:
            w = tokens[j]
            if w in _WITHOUT and j > i + 1:
                break  # the next "без ...": the outer loop reads it
            if w in _AND or w in _FILLER or w in _NEG or w in _WITHOUT:
                j += 1
                continue
            if any(
                w.startswith(s) for s in (*_BRAND_WORDS, "дорог", "expensive", *_CHEAPER, *_DEARER)
            ):
                break  # "не этот бренд", "не дороже": brand and price, read elsewhere
            if any(w.startswith(s) for keys in _STEERS.values() for s in keys):
                break  # "не меньше" is a size, not an ingredient
            if len(w) >= 3 and not w.isdigit():
                out.append(_concept(w) or _stem(w))
            j += 1
        i = max(j, i + 1)
    uniq = list(dict.fromkeys(out))
    return uniq[:MAX_WITHOUT], len(uniq) > MAX_WITHOUT


def parse_critique(text: str) -> Critique:
    """Understand a critique (see the module docstring); never raises on odd text.

    Raises:
        ValueError: only if ``text`` is longer than :data:`MAX_CRITIQUE`
            (the API refuses it before; a caller of this function must too).
    """
    if len(text) > MAX_CRITIQUE:
        raise ValueError(f"a critique has at most {MAX_CRITIQUE} characters, got {len(text)}")
    low = " ".join(text.lower().replace("ё", "е").replace("’", "'").replace("`", "'").split())
    lang = _language(low)
    if lang == "unknown":
        return Critique(text, lang, flags=("unknown language: ignored",) if low else ())
    tokens = _TOKEN.findall(low)
    flags: list[str] = []
    lower, higher = _price(tokens)
    price = None
    if lower and higher:
        flags.append("contradictory: cheaper and more expensive; price ignored")
    elif lower or higher:
        price = "lower" if lower else "higher"
    without, cut = _without(tokens)
    if cut:
        flags.append(f"more than {MAX_WITHOUT} things to go without: only the first used")
    steer: list[str] = []
    for i, w in enumerate(tokens):
        for s, keys in _STEERS.items():
            if w.startswith(keys) or _STEER_WORDS.get(w) == s:
                negated = any(b in _NEG for b in tokens[max(0, i - 2) : i])
                if negated and s in ("bigger", "smaller"):  # "не меньше": not smaller
                    s = "smaller" if s == "bigger" else "bigger"
                elif negated:
                    continue  # "not for kids", "не полезное": no steer either way
                steer.append(s)
    steer = list(dict.fromkeys(steer))
    if "bigger" in steer and "smaller" in steer:
        flags.append("contradictory: bigger and smaller; size ignored")
        steer = [s for s in steer if s not in ("bigger", "smaller")]
    crit = Critique(
        text, lang, price, _other_brand(tokens), tuple(without), tuple(steer), tuple(flags)
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


class CatalogIndex:
    """Items' attributes as arrays, in a fixed item order, for critique masks.

    Built once per catalog (the engine core loads it with the model): the
    named concepts' masks are computed here; a free word ("без кинзы") is a
    prefix range of the sorted vocabulary (bisect), its mask kept in a
    bounded cache, so a request never scans the catalog.
    """

    CACHE = 4096  # free-word masks kept (least recently used dropped)

    def __init__(self, items: Sequence[str], attributes: Mapping[str, ItemAttributes]) -> None:
        self.items = list(items)
        self.attributes = dict(attributes)
        self._pos = {it: i for i, it in enumerate(self.items)}
        self._n = len(self.items)
        blank = ItemAttributes()
        attrs = [self.attributes.get(it, blank) for it in self.items]
        self.price = np.array(
            [np.nan if a.price is None else float(a.price) for a in attrs], dtype=np.float64
        )
        self.brand = np.array([a.brand.strip().lower() for a in attrs], dtype=object)
        self.text = [_norm(" ".join([a.title, *a.category, a.brand])) for a in attrs]
        self.unknown = np.array([not t for t in self.text], dtype=bool)  # nothing to read
        index: dict[str, list[int]] = {}
        for i, t in enumerate(self.text):
            for w in set(t.split()):
                index.setdefault(w, []).append(i)
        self._vocab = sorted(index)
        self._items_of = [np.array(index[w], dtype=np.int64) for w in self._vocab]
        self._size = np.array([_pack_size(a.title) for a in attrs], dtype=np.float64)
        self._free: OrderedDict[str, np.ndarray] = OrderedDict()
        self._concepts = {name: self._concept_mask(c) for name, c in CONCEPTS.items()}
        for m in self._concepts.values():
            m.setflags(write=False)
        self._steers: dict[tuple[str, ...], np.ndarray] = {}  # read-only, few distinct keys

    @classmethod
    def from_json(
        cls, items: Sequence[str], doc: Mapping[str, Mapping[str, object]]
    ) -> CatalogIndex:
        """From ``catalog.json``'s mapping item id -> {title, category, brand, price}.

        Raises:
            CatalogError: a price that is not a finite number >= 0 (names the item).
        """
        attrs = {}
        for it, a in doc.items():
            price = a.get("price")
            if price is not None and (
                isinstance(price, bool)
                or not isinstance(price, (int, float))
                or not math.isfinite(price)
                or price < 0
            ):
                raise CatalogError(f"item {it!r}: price {price!r} is not a finite number >= 0")
            cat = a.get("category") or ()
            attrs[it] = ItemAttributes(
                str(a.get("title") or ""),
                tuple(str(c) for c in cat) if isinstance(cat, (list, tuple)) else (),
                str(a.get("brand") or ""),
                None if price is None else float(price),
            )
        return cls(items, attrs)

    def index_of(self, item: str) -> int:
        """The item's position in :attr:`items` (-1: not in the catalog)."""
        return self._pos.get(item, -1)

    def pack_size(self, i: int) -> float:
        """The pack size read from item ``i``'s title (g, ml; pieces as 100), NaN if none."""
        return float(self._size[i])

    def _with_prefix(self, prefix: str) -> np.ndarray:
        """Indices of the items with a word starting with ``prefix`` (a bisect range)."""
        lo = bisect.bisect_left(self._vocab, prefix)
        hi = bisect.bisect_left(self._vocab, prefix + "\U0010ffff")
        if lo >= hi:
            return np.zeros(0, dtype=np.int64)
        out: np.ndarray = np.unique(np.concatenate(self._items_of[lo:hi]))
        return out

    def _concept_mask(self, c: _Concept) -> np.ndarray:
        hit = np.zeros(self._n, dtype=bool)
        for w in c.words:
            hit[self._with_prefix(w)] = True
        phrases = [f" {_norm(x)} " for x in c.exempt]
        for i in np.flatnonzero(hit):  # "No Sugar" is free of sugar; "oat milk ... cheese" is not
            text = f" {self.text[i]} "
            if any(p in text for p in phrases):
                for p in phrases:
                    text = text.replace(p, " ")
                hit[i] = any(x.startswith(c.words) for x in text.split())
        return hit

    def mentions(self, concept_or_stem: str) -> np.ndarray:
        """Items whose text has the concept (or the stem) as a word prefix, minus exemptions.

        A new array (the cached masks stay read-only); an item with no text at
        all counts as mentioning it (nothing shows it is free of it).
        """
        got = self._concepts.get(concept_or_stem)
        if got is None:
            got = self._free.get(concept_or_stem)
            if got is None:
                got = np.zeros(self._n, dtype=bool)
                got[self._with_prefix(concept_or_stem)] = True
                got.setflags(write=False)
                self._free[concept_or_stem] = got
                if len(self._free) > self.CACHE:
                    self._free.popitem(last=False)
            else:
                self._free.move_to_end(concept_or_stem)
        out: np.ndarray = got | self.unknown
        return out

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
            m = self.mentions(w)
            named = int((m & ~self.unknown).sum())
            if not named:
                flags.append(f"without {w}: no item of the catalog mentions it; ignored")
                continue
            allowed &= ~m
            applied.append(f"without {w} ({named} item{'s' if named > 1 else ''})")
        steer = self.steer(critique.steer) if critique.steer else None
        return Verdict(allowed if applied else None, tuple(applied), tuple(flags), steer)

    def steer(self, steers: Iterable[str]) -> np.ndarray:
        """A log-score bonus per item for soft preferences (0 where it does not apply).

        "healthier": items described as light, organic, whole grain, no sugar,
        vegetables, fruit; "kids": items for children; "bigger"/"smaller": the
        pack size against the median of its category words (titles' "400 g",
        "1 l", "2 kg", "6 pcs"). Read-only: kept per distinct list of steers.
        """
        key = tuple(steers)
        got = self._steers.get(key)
        if got is None:
            got = self._steer(key)
            got.setflags(write=False)
            if len(self._steers) < 64:
                self._steers[key] = got
        return got

    def _steer(self, steers: tuple[str, ...]) -> np.ndarray:
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
_KIDS = ("kids", "child", "baby", "toddler", "детск", "детей", "малыш", "ребен")
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
    if path.stat().st_size > MAX_CATALOG_BYTES:
        raise CatalogError(f"{path}: larger than {MAX_CATALOG_BYTES >> 20} MiB")
    try:
        doc = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CatalogError(f"{path}: unreadable catalog ({e})") from e
    entries = doc.get("items") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("format") != CATALOG_FORMAT:
        raise CatalogError(f"{path}: not a userlayer catalog (format {CATALOG_FORMAT!r})")
    if not isinstance(entries, dict):
        raise CatalogError(f"{path}: `items` is not an object")
    bad = [k for k, v in entries.items() if not isinstance(v, dict)]
    if bad:
        raise CatalogError(f"{path}: item {bad[0]!r} is not an object of attributes")
    return CatalogIndex.from_json(items, entries)
