"""Token layout of the generative recommender.

A sequence is a run of *steps*, one per item: a context position followed by
the item's Semantic ID codes, and ends with the context position of the item to
generate::

    [CTX c1 c2 c3 c4] [CTX c1 c2 c3 c4] ... [CTX] -> generate c1 c2 c3 c4

Token ids: ``0`` padding, ``1`` the context position, then the codes of every
level at their offsets (``2 + level_offset[l] + code``). The context position's
embedding is the sum of seven field embeddings (service, mode, daypart,
weekday, season, weather, geo cell), given as ``ctx`` ids of shape (T, 7);
each field's id 0 means "none", 1 "unknown", the values follow.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from userlayer.sdk.schemas import Context, Daypart, Mode, Season, Service, Weather

__all__ = [
    "CTX",
    "CTX_FIELDS",
    "PAD",
    "ContextIds",
    "ContextVocab",
    "item_key",
    "item_tokens",
    "level_offsets",
    "level_radix",
]

PAD = 0
CTX = 1
FIRST_CODE = 2
CTX_FIELDS = ("service", "mode", "daypart", "weekday", "season", "weather", "geo_cell")

ContextIds = tuple[int, int, int, int, int, int, int]


def level_offsets(level_sizes: Sequence[int]) -> list[int]:
    """Offset of each level's codes in the output (code) vocabulary."""
    out, acc = [], 0
    for s in level_sizes:
        out.append(acc)
        acc += s
    return out


def item_tokens(level_sizes: Sequence[int], codes: Sequence[int]) -> list[int]:
    """Token ids of an item's Semantic ID codes (each level at its offset after FIRST_CODE)."""
    offs = level_offsets(level_sizes)
    return [FIRST_CODE + o + c for o, c in zip(offs, codes, strict=True)]


def level_radix(level_sizes: Sequence[int]) -> list[int]:
    """Each level's place value when a Semantic ID is read as one mixed-radix integer."""
    out = [1] * len(level_sizes)
    for lvl in range(len(level_sizes) - 2, -1, -1):
        out[lvl] = out[lvl + 1] * level_sizes[lvl + 1]
    return out


def item_key(level_sizes: Sequence[int], codes: Sequence[int]) -> int:
    """An item's Semantic ID as one integer (mixed radix): the dense item head's sort key."""
    return sum(c * r for c, r in zip(codes, level_radix(level_sizes), strict=True))


def _ids(values: Sequence[str]) -> dict[str, int]:
    # 0 = none (padding), 1 = unknown, values from 2
    return {v: i + 2 for i, v in enumerate(values)}


@dataclass(frozen=True)
class ContextVocab:
    """Maps context fields to ids; ``sizes`` are the embedding table sizes."""

    geo_buckets: int = 64

    @property
    def sizes(self) -> tuple[int, ...]:
        """Embedding rows per field (none, unknown, values)."""
        return (
            2 + len(Service),
            2 + len(Mode),
            2 + len(Daypart),
            2 + 7,
            2 + len(Season),
            2 + len(Weather),
            2 + self.geo_buckets,
        )

    def encode(
        self,
        service: str,
        mode: str = "unspecified",
        daypart: str = "unknown",
        weekday: int | None = None,
        season: str = "unknown",
        weather: str = "unknown",
        geo_cell: str | None = None,
    ) -> ContextIds:
        """Encode one context; unknown strings map to the field's "unknown" id."""
        return (
            _SERVICE.get(service, 1),
            _MODE.get(mode, 1),
            _DAYPART.get(daypart, 1),
            1 if weekday is None else 2 + int(weekday) % 7,
            _SEASON.get(season, 1),
            _WEATHER.get(weather, 1),
            self.geo_id(geo_cell),
        )

    def encode_context(self, service: Service | str, ctx: Context) -> ContextIds:
        """Encode a :class:`Context` of a request for ``service``."""
        return self.encode(
            str(service),
            ctx.mode.value,
            ctx.daypart.value,
            ctx.weekday,
            ctx.season.value,
            ctx.weather.value,
            ctx.geo_cell,
        )

    def geo_id(self, cell: str | None) -> int:
        """Stable hash bucket of a geo cell (crc32, not Python's salted hash)."""
        if not cell:
            return 1
        return 2 + zlib.crc32(cell.encode()) % self.geo_buckets


_SERVICE = _ids([s.value for s in Service])
_MODE = _ids([m.value for m in Mode])
_DAYPART = _ids([d.value for d in Daypart])
_SEASON = _ids([s.value for s in Season])
_WEATHER = _ids([w.value for w in Weather])
MODE_INDEX = {Mode.HUNGRY: 0, Mode.SHOPPING: 1, Mode.HEALTH: 2}
