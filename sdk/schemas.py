"""Typed records shared by every userlayer package.

``Event`` is one user action on one of the three services, ``Item`` one
catalog entry, ``Context`` the request/event context the model conditions on.
They are pydantic models: construct them with keyword arguments or
``Event.model_validate(dict)``; any bad field raises :class:`SchemaError`
whose message names the field (``Event.parse`` does the wrapping).

Bulk data (event files) is columnar and validated column-wise by
``userlayer.tools.data``; these models are for single records crossing an
API or an edge node boundary.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from userlayer.sdk.exceptions import SchemaError

__all__ = [
    "Action",
    "Context",
    "Daypart",
    "Event",
    "Item",
    "Mode",
    "Season",
    "Service",
    "Weather",
    "daypart_of",
    "describe_validation_error",
    "season_of",
]

_ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"
GEO_PATTERN = r"^[a-z0-9_\-]{1,32}$"


class Service(StrEnum):
    """The three commerce services sharing one base model."""

    SAMOKAT = "samokat"
    MEGAMARKET = "megamarket"
    KUPER = "kuper"


class Action(StrEnum):
    """What the user did with the item."""

    VIEW = "view"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"
    RATE = "rate"


class Mode(StrEnum):
    """The user's intent; ``unspecified`` asks for automatic mode detection."""

    HUNGRY = "hungry"
    SHOPPING = "shopping"
    HEALTH = "health"
    UNSPECIFIED = "unspecified"


class Daypart(StrEnum):
    """Part of the day in local time."""

    NIGHT = "night"  # 00-06
    MORNING = "morning"  # 06-12
    AFTERNOON = "afternoon"  # 12-18
    EVENING = "evening"  # 18-24
    UNKNOWN = "unknown"


class Season(StrEnum):
    """Meteorological season (northern hemisphere)."""

    WINTER = "winter"
    SPRING = "spring"
    SUMMER = "summer"
    AUTUMN = "autumn"
    UNKNOWN = "unknown"


class Weather(StrEnum):
    """Coarse weather at the user's location."""

    CLEAR = "clear"
    CLOUDY = "cloudy"
    RAIN = "rain"
    SNOW = "snow"
    HEAT = "heat"
    FROST = "frost"
    UNKNOWN = "unknown"


def daypart_of(ts: datetime) -> Daypart:
    """Return the daypart of a timestamp (its own hour, whatever its zone)."""
    return (Daypart.NIGHT, Daypart.MORNING, Daypart.AFTERNOON, Daypart.EVENING)[ts.hour // 6]


def season_of(ts: datetime) -> Season:
    """Return the meteorological season of a timestamp's month."""
    return (
        Season.WINTER,
        Season.WINTER,
        Season.SPRING,
        Season.SPRING,
        Season.SPRING,
        Season.SUMMER,
        Season.SUMMER,
        Season.SUMMER,
        Season.AUTUMN,
        Season.AUTUMN,
        Season.AUTUMN,
        Season.WINTER,
    )[ts.month - 1]


def describe_validation_error(err: ValidationError, what: str) -> str:
    """Turn a pydantic error into one line per bad field, naming each field."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        bad = e.get("input")
        shown = repr(bad) if not isinstance(bad, dict) else "{...}"
        if len(shown) > 60:
            shown = shown[:57] + "..."
        parts.append(f"{loc}: {e['msg']} (got {shown})")
    return f"invalid {what}: " + "; ".join(parts)


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    @classmethod
    def parse(cls, data: Any) -> Self:
        """Validate a mapping into this record.

        Raises:
            SchemaError: naming every bad field and the value it got.
        """
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise SchemaError(describe_validation_error(e, cls.__name__)) from e


class Context(_Record):
    """Context of an event or a request: intent, time, weather, place."""

    mode: Mode = Mode.UNSPECIFIED
    daypart: Daypart = Daypart.UNKNOWN
    weekday: int | None = Field(default=None, ge=0, le=6, description="0 = Monday")
    season: Season = Season.UNKNOWN
    weather: Weather = Weather.UNKNOWN
    geo_cell: str | None = Field(default=None, pattern=GEO_PATTERN)

    @classmethod
    def from_timestamp(cls, ts: datetime, **fields: Any) -> Context:
        """Build a context whose daypart, weekday and season come from ``ts``."""
        return cls.parse(
            {
                "daypart": daypart_of(ts),
                "weekday": ts.weekday(),
                "season": season_of(ts),
                **fields,
            }
        )


class Event(_Record):
    """One action of one user on one item of one service."""

    user_id: str = Field(pattern=_ID_PATTERN)
    service: Service
    item_id: str = Field(pattern=_ID_PATTERN)
    action: Action
    timestamp: datetime
    quantity: int = Field(default=1, ge=1, le=10_000)
    price: float | None = Field(default=None, ge=0, le=1e9, allow_inf_nan=False)
    context: Context = Field(default_factory=Context)

    @field_validator("timestamp")
    @classmethod
    def _aware_utc(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("timestamp must carry a timezone (use UTC)")
        return v.astimezone(UTC)


class Item(_Record):
    """One catalog item. IDs are unique across the three services."""

    item_id: str = Field(pattern=_ID_PATTERN)
    service: Service
    title: str = Field(default="", max_length=300)
    category: tuple[str, ...] = Field(default=(), max_length=8, description="root first")
    brand: str = Field(default="", max_length=100)
    price: float | None = Field(default=None, ge=0, le=1e9, allow_inf_nan=False)

    @field_validator("category")
    @classmethod
    def _no_empty_levels(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not level.strip() for level in v):
            raise ValueError("category levels must be non-empty")
        return v

    @property
    def has_text(self) -> bool:
        """Whether the item has any text to embed."""
        return bool(self.title or self.brand or self.category)
