"""Explanations made on the edge, from the user's own history and context.

Why is an item recommended to this user now? The local model (the base with
the user's layer) scores the item's Semantic ID as the log-probability of its
codes after a prompt of the user's recent events and the request's context.
Each piece of evidence is *occluded* in turn: one history event removed from
the prompt, or one context field (mode, daypart, weekday, season, weather)
set to "unknown". The drop of the item's log-probability is that evidence's
attribution; the largest positive drops are cited and rendered as a short
narrative in the user's language, with the repurchase cycle when a cited
event is the same item.

Faithfulness is measurable with the same scorer (ERASER, DeYoung et al.
2020): removing all the cited evidence together should lower the item's
score (comprehensiveness), and keeping only the cited evidence should keep
most of it (sufficiency); :meth:`Explainer.without` and :meth:`Explainer.only`
compute both, ``userlayer eval-explanations`` reports them beside evidence
picked at random.

Everything here runs where the profile lives. Nothing is sent anywhere: the
explanations, like the events they cite, stay on the edge.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import torch
from torch import Tensor

from userlayer.edge.exceptions import ExplainError
from userlayer.sdk.model.config import AdapterConfig
from userlayer.sdk.model.prompt import mode_one_hot, pack_prompts
from userlayer.sdk.model.tokens import CTX, FIRST_CODE, item_tokens
from userlayer.sdk.model.transformer import Recommender, RowAdapters
from userlayer.sdk.schemas import Context, Daypart, Event, Mode, Season, Service, Weather
from userlayer.sdk.semantic_ids import SemanticIdTable

__all__ = [
    "CONTEXT_FIELDS",
    "LANGUAGES",
    "Evidence",
    "ExplainConfig",
    "ExplainError",
    "Explainer",
    "Explanation",
    "Unit",
    "render",
]

CONTEXT_FIELDS = ("mode", "daypart", "weekday", "season", "weather")
LANGUAGES = ("ru", "en")
_ABSENT: dict[str, Any] = {
    "mode": Mode.UNSPECIFIED,
    "daypart": Daypart.UNKNOWN,
    "weekday": None,
    "season": Season.UNKNOWN,
    "weather": Weather.UNKNOWN,
}


@dataclass(frozen=True)
class ExplainConfig:
    """How explanations are made; validated on creation.

    ``history``: the last events in the prompt (the base's context holds 20
    items); ``max_reasons``: evidence cited per item at most; ``min_drop``:
    the least log-probability drop (nats) that counts as evidence.
    """

    history: int = 20
    max_reasons: int = 3
    min_drop: float = 0.1
    language: str = "ru"
    batch_rows: int = 512

    def __post_init__(self) -> None:
        if self.history < 1 or self.max_reasons < 1 or self.batch_rows < 1:
            raise ExplainError("`history`, `max_reasons` and `batch_rows` should be at least 1")
        if not self.min_drop > 0:  # 0 would cite evidence whose removal changes nothing
            raise ExplainError(f"`min_drop` should be > 0 nats, got {self.min_drop}")
        if self.language not in LANGUAGES:
            raise ExplainError(f"`language` should be one of {LANGUAGES}, got {self.language!r}")


@dataclass(frozen=True)
class Unit:
    """One removable piece of evidence: a history event (by position) or a context field."""

    kind: str  # "event" or "context"
    index: int = -1  # position in the prompt's history (events)
    field: str = ""  # context field (context)


@dataclass(frozen=True)
class Evidence:
    """A cited reason: what it is and how much it raises the item's log-probability."""

    unit: Unit
    drop: float  # log-probability lost when this evidence alone is removed (nats)
    item_id: str = ""  # the past event's item (events)
    value: str = ""  # the context field's value (context)
    days_ago: float | None = None  # age of the past event at the request's time
    action: str = ""  # the past event's action (purchase, add_to_cart, view, rate)
    when: datetime | None = None  # the past event's time (narratives count calendar days)


@dataclass(frozen=True)
class Explanation:
    """Why one item is recommended: its log-probability, the cited evidence, the narrative."""

    item_id: str
    log_prob: float
    evidence: tuple[Evidence, ...]
    text: str
    language: str


@dataclass(frozen=True)
class _Request:
    history: tuple[Event, ...]
    service: str
    context: Context


def _days(now: datetime, then: datetime) -> float:
    return max(0.0, (now - then).total_seconds() / 86400.0)


class Explainer:
    """Occlusion attribution and narratives for one model (with or without a user's layer)."""

    def __init__(
        self,
        model: Recommender,
        table: SemanticIdTable,
        adapter: Mapping[str, Tensor] | None = None,
        adapter_config: AdapterConfig | None = None,
        cfg: ExplainConfig | None = None,
    ) -> None:
        if adapter is not None and adapter_config is None:
            raise ExplainError("a user's layer needs its AdapterConfig")
        self.model = model.eval()
        self.table = table
        self.adapter = dict(adapter) if adapter is not None else None
        self.acfg = adapter_config
        self.cfg = cfg or ExplainConfig()

    # -- scoring

    def _prompt(self, req: _Request, gone: frozenset[Unit]) -> tuple[list[int], list[list[int]]]:
        vocab = self.model.ctx_vocab
        zero = [0] * len(vocab.sizes)
        toks: list[int] = []
        ctx: list[list[int]] = []
        for i, e in enumerate(req.history):
            if Unit("event", i) in gone:
                continue
            codes = item_tokens(self.table.level_sizes, self.table.codes[e.item_id])
            toks += [CTX, *codes]
            ctx += [list(vocab.encode_context(e.service, e.context))] + [zero] * len(codes)
        context = req.context.model_copy(
            update={f: _ABSENT[f] for f in CONTEXT_FIELDS if Unit("context", field=f) in gone}
        )
        toks.append(CTX)
        ctx.append(list(vocab.encode_context(req.service, context)))
        return toks, ctx

    def _mode(self, req: _Request, gone: frozenset[Unit]) -> Mode:
        return Mode.UNSPECIFIED if Unit("context", field="mode") in gone else req.context.mode

    @torch.no_grad()
    def _scores(self, req: _Request, pairs: Sequence[tuple[frozenset[Unit], str]]) -> Tensor:
        """Log-probability of each (removed units, item) pair's item after its prompt: (P,).

        Each distinct prompt is run once; its items' codes continue it through
        the prompt's cache (one prefill per variant, not one per pair).
        """
        n_ctx = len(self.model.ctx_vocab.sizes)
        variants = list(dict.fromkeys(g for g, _ in pairs))
        which = {g: i for i, g in enumerate(variants)}
        tok, ctx = pack_prompts([self._prompt(req, g) for g in variants], n_ctx)
        first, cache = self.model(
            tok, ctx, self.row_adapters([self._mode(req, g) for g in variants]), return_cache=True
        )
        assert cache is not None
        rows = torch.tensor([which[g] for g, _ in pairs])
        codes = torch.tensor(
            [item_tokens(self.table.level_sizes, self.table.codes[it]) for _, it in pairs]
        )  # (P, L) token ids
        out = []
        step = self.cfg.batch_rows
        for s in range(0, len(pairs), step):
            r, c = rows[s : s + step], codes[s : s + step]
            ad = self.row_adapters([self._mode(req, variants[int(i)]) for i in r])
            rest, _ = self.model(
                c[:, :-1],
                torch.zeros(*c[:, :-1].shape, n_ctx, dtype=torch.long),
                ad,
                cache=cache.select(r),
            )
            logits = torch.cat([first[r, -1:], rest], dim=1)  # (p, L, n_codes)
            level = torch.arange(c.shape[1]).expand(c.shape[0], -1)
            logp = self.model.level_logits(logits, level).log_softmax(-1)
            out.append(logp.gather(-1, (c - FIRST_CODE)[..., None])[..., 0].sum(1))
        return torch.cat(out)

    def row_adapters(self, modes: Sequence[Mode]) -> RowAdapters | None:
        """The user's layer for rows of these modes (None: the base alone)."""
        if self.adapter is None or self.acfg is None:
            return None
        n = len(modes)
        tensors = {k: v[None].expand(n, *v.shape) for k, v in self.adapter.items()}
        weights = None
        if self.acfg.n_modes:
            weights = torch.tensor([mode_one_hot(m, self.acfg.n_modes) for m in modes])
        return RowAdapters(self.acfg, torch.ones(n, dtype=torch.bool), tensors, weights)

    # -- requests

    def request(
        self, history: Sequence[Event], service: Service | str, context: Context | None = None
    ) -> _Request:
        """The prompt's parts: the last events the catalog knows, in time order.

        At most ``history`` events, and no more than the base's context holds
        (``max_items - 1``: the item being scored takes the last place).
        """
        cap = min(self.cfg.history, self.model.cfg.max_items - 1)
        known = [
            e for e in sorted(history, key=lambda e: e.timestamp) if e.item_id in self.table.codes
        ]
        return _Request(tuple(known[-cap:]), Service(service).value, context or Context())

    def prompt_tensors(self, req: _Request) -> tuple[Tensor, Tensor]:
        """The whole prompt as (1, T) tokens and (1, T, n_ctx) context ids (for search)."""
        return pack_prompts([self._prompt(req, frozenset())], len(self.model.ctx_vocab.sizes))

    def units(self, req: _Request) -> list[Unit]:
        """Every piece of evidence of a request: its events and its known context fields."""
        out = [Unit("event", i) for i in range(len(req.history))]
        for f in CONTEXT_FIELDS:
            if getattr(req.context, f) != _ABSENT[f]:
                out.append(Unit("context", field=f))
        return out

    def _check_items(self, items: Sequence[str]) -> None:
        unknown = [i for i in items if i not in self.table.codes]
        if unknown:
            raise ExplainError(f"items the catalog does not know: {unknown[:5]}")

    def score(self, req: _Request, items: Sequence[str]) -> Tensor:
        """Log-probability of each item after the whole prompt: (I,)."""
        return self.without(req, items, [()] * len(items))

    def without(
        self, req: _Request, items: Sequence[str], gone: Sequence[Sequence[Unit]]
    ) -> Tensor:
        """Log-probability of item ``i`` with the units ``gone[i]`` removed: (I,)."""
        self._check_items(items)
        return self._scores(req, [(frozenset(g), it) for it, g in zip(items, gone, strict=True)])

    def only(self, req: _Request, items: Sequence[str], kept: Sequence[Sequence[Unit]]) -> Tensor:
        """Log-probability of item ``i`` when only the units ``kept[i]`` remain: (I,)."""
        every = self.units(req)
        return self.without(req, items, [[u for u in every if u not in set(k)] for k in kept])

    def attributions(
        self, req: _Request, items: Sequence[str]
    ) -> tuple[Tensor, Tensor, list[Unit]]:
        """The full score (I,), each unit's drop (U, I), and the units (occlusion, one pass)."""
        self._check_items(items)
        units = self.units(req)
        variants = [frozenset(), *(frozenset([u]) for u in units)]
        sc = self._scores(req, [(g, it) for g in variants for it in items])
        sc = sc.view(len(variants), len(items))
        return sc[0], sc[0][None] - sc[1:], units

    # -- explanations

    def explain(
        self,
        history: Sequence[Event],
        service: Service | str,
        items: Sequence[str],
        context: Context | None = None,
        now: datetime | None = None,
        titles: Mapping[str, str] | None = None,
        language: str | None = None,
    ) -> list[Explanation]:
        """One explanation per item, in the order given.

        ``history``: the user's events (decrypted, here); ``service`` and
        ``context``: the request's; ``now``: the request's time (days-ago
        phrases); ``titles``: item titles for the narrative (ids otherwise).

        Raises:
            ExplainError: an item the catalog does not know, or an unknown language.
        """
        lang = language or self.cfg.language
        if lang not in LANGUAGES:
            raise ExplainError(f"`language` should be one of {LANGUAGES}, got {lang!r}")
        if not items:
            return []
        now = now or datetime.now(UTC)
        req = self.request(history, service, context)
        full, drops, units = self.attributions(req, items)
        names = dict(titles or {})
        out = []
        for j, item in enumerate(items):
            order = sorted(range(len(units)), key=lambda u: -float(drops[u, j]))
            cited = []
            for u in order[: self.cfg.max_reasons]:
                d = float(drops[u, j])
                if d < self.cfg.min_drop:
                    break
                unit = units[u]
                if unit.kind == "event":
                    e = req.history[unit.index]
                    cited.append(
                        Evidence(
                            unit,
                            d,
                            item_id=e.item_id,
                            days_ago=_days(now, e.timestamp),
                            action=e.action.value,
                            when=e.timestamp,
                        )
                    )
                else:
                    value = getattr(req.context, unit.field)
                    cited.append(Evidence(unit, d, value=str(getattr(value, "value", value))))
            text = render(item, cited, history, now, names, lang)
            out.append(Explanation(item, float(full[j]), tuple(cited), text, lang))
        return out


# -- narratives

_WORDS: dict[str, dict[str, Any]] = {
    "ru": {
        "because": "«{t}»: {r}.",
        "none": (
            "«{t}»: подходит к вашим покупкам в целом;"
            " ни одно отдельное событие или обстоятельство не выделяется."
        ),
        "and": " и ",
        "event": {
            "purchase": "вы брали «{t}» {ago}",
            "add_to_cart": "вы добавляли в корзину «{t}» {ago}",
            "view": "вы смотрели «{t}» {ago}",
            "rate": "вы оценили «{t}» {ago}",
        },
        "again": "вы берёте это примерно раз в {gap} дн., последний раз {ago}",
        "once": "вы уже брали это {ago}",
        "seen": "вы уже смотрели это {ago}",
        "today": "сегодня",
        "yesterday": "вчера",
        "days": "{n} дн. назад",
        "mode": {
            "hungry": "вы сейчас хотите есть",
            "shopping": "вы сейчас в режиме покупок",
            "health": "вы сейчас выбираете полезное",
        },
        "daypart": {
            "night": "сейчас ночь",
            "morning": "сейчас утро",
            "afternoon": "сейчас день",
            "evening": "сейчас вечер",
        },
        "weekday": [
            "сегодня понедельник",
            "сегодня вторник",
            "сегодня среда",
            "сегодня четверг",
            "сегодня пятница",
            "сегодня суббота",
            "сегодня воскресенье",
        ],
        "season": {
            "winter": "сейчас зима",
            "spring": "сейчас весна",
            "summer": "сейчас лето",
            "autumn": "сейчас осень",
        },
        "weather": {
            "clear": "на улице ясно",
            "cloudy": "на улице пасмурно",
            "rain": "идёт дождь",
            "snow": "идёт снег",
            "heat": "на улице жара",
            "frost": "на улице мороз",
        },
    },
    "en": {
        "because": "“{t}”: {r}.",
        "none": (
            "“{t}”: fits your purchases as a whole; no single event or circumstance stands out."
        ),
        "and": " and ",
        "event": {
            "purchase": "you had “{t}” {ago}",
            "add_to_cart": "you put “{t}” in your cart {ago}",
            "view": "you looked at “{t}” {ago}",
            "rate": "you rated “{t}” {ago}",
        },
        "again": "you buy it about every {gap} days, last {ago}",
        "once": "you already had it {ago}",
        "seen": "you already looked at it {ago}",
        "today": "today",
        "yesterday": "yesterday",
        "days": "{n} days ago",
        "mode": {
            "hungry": "you are hungry now",
            "shopping": "you are shopping",
            "health": "you are choosing healthy food",
        },
        "daypart": {
            "night": "it is night",
            "morning": "it is morning",
            "afternoon": "it is afternoon",
            "evening": "it is evening",
        },
        "weekday": [
            "it is Monday",
            "it is Tuesday",
            "it is Wednesday",
            "it is Thursday",
            "it is Friday",
            "it is Saturday",
            "it is Sunday",
        ],
        "season": {
            "winter": "it is winter",
            "spring": "it is spring",
            "summer": "it is summer",
            "autumn": "it is autumn",
        },
        "weather": {
            "clear": "the sky is clear",
            "cloudy": "it is cloudy",
            "rain": "it is raining",
            "snow": "it is snowing",
            "heat": "it is hot",
            "frost": "it is freezing",
        },
    },
}


def _calendar_days(now: datetime, then: datetime) -> int:
    """Calendar days from ``then`` to ``now``, in ``now``'s time zone (yesterday is 1)."""
    zone = now.tzinfo or UTC
    return max(0, (now.astimezone(zone).date() - then.astimezone(zone).date()).days)


def _ago(days: int, w: Mapping[str, Any]) -> str:
    if days == 0:
        return str(w["today"])
    if days == 1:
        return str(w["yesterday"])
    return str(w["days"]).format(n=days)


_BOUGHT = ("purchase", "add_to_cart")


def _repurchase(item: str, history: Sequence[Event], now: datetime, w: Mapping[str, Any]) -> str:
    """The same item before: its purchase cycle, or that it was bought or seen once."""
    mine = sorted((e for e in history if e.item_id == item), key=lambda e: e.timestamp)
    bought = [e.timestamp for e in mine if e.action.value == "purchase"]
    if not bought:
        last = mine[-1]
        key = "once" if last.action.value in _BOUGHT else "seen"
        return str(w[key]).format(ago=_ago(_calendar_days(now, last.timestamp), w))
    ago = _ago(_calendar_days(now, bought[-1]), w)
    gaps = [_days(b, a) for a, b in itertools.pairwise(bought) if _days(b, a) >= 0.5]
    if not gaps:
        return str(w["once"]).format(ago=ago)
    return str(w["again"]).format(gap=max(1, round(statistics.median(gaps))), ago=ago)


def render(
    item: str,
    cited: Sequence[Evidence],
    history: Sequence[Event],
    now: datetime,
    titles: Mapping[str, str],
    lang: str,
) -> str:
    """The narrative of one item from its cited evidence (templates, no model).

    A cited past event of the same item is told as its repurchase cycle (the
    median gap between the user's purchases of that item, the last one's age);
    each other event with its own action's verb (bought, put in the cart,
    looked at, rated) and its age in calendar days.
    """
    w = _WORDS[lang]
    title = titles.get(item, item)
    if not cited:
        return str(w["none"]).format(t=title)
    reasons: list[str] = []
    said_again = False
    for ev in cited:
        if ev.unit.kind == "event":
            if ev.item_id == item:  # the same item before: its repurchase cycle, once
                if not said_again:
                    reasons.append(_repurchase(item, history, now, w))
                    said_again = True
                continue
            days = _calendar_days(now, ev.when) if ev.when else int(ev.days_ago or 0)
            ago = _ago(days, w)
            verb = w["event"].get(ev.action, w["event"]["purchase"])
            reasons.append(str(verb).format(t=titles.get(ev.item_id, ev.item_id), ago=ago))
        elif ev.unit.field == "weekday":
            reasons.append(str(w["weekday"][int(ev.value)]))
        else:
            reasons.append(str(w[ev.unit.field][ev.value]))
    text = ", ".join(reasons[:-1]) + (str(w["and"]) if len(reasons) > 1 else "") + reasons[-1]
    return str(w["because"]).format(t=title, r=text)
