from __future__ import annotations

from datetime import UTC, datetime

import pytest

from userlayer.sdk import Context, Event, Item, SchemaError
from userlayer.sdk.schemas import Daypart, Season, daypart_of, season_of

GOOD_EVENT = {
    "user_id": "u1",
    "service": "samokat",
    "item_id": "sm-00001",
    "action": "purchase",
    "timestamp": "2025-06-01T12:00:00Z",
    "quantity": 2,
    "price": 99.9,
    "context": {
        "mode": "hungry",
        "daypart": "afternoon",
        "weekday": 6,
        "season": "summer",
        "weather": "rain",
        "geo_cell": "msk-03",
    },
}


def test_good_event_parses() -> None:
    e = Event.parse(GOOD_EVENT)
    assert e.service == "samokat"
    assert e.timestamp.tzinfo is not None
    assert e.context.mode == "hungry"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"service": "ozon"}, "service"),
        ({"action": "buy"}, "action"),
        ({"user_id": ""}, "user_id"),
        ({"user_id": "a b"}, "user_id"),
        ({"item_id": "x" * 200}, "item_id"),
        ({"quantity": 0}, "quantity"),
        ({"price": -1}, "price"),
        ({"price": float("nan")}, "price"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"timestamp": "2025-06-01T12:00:00"}, "timestamp"),  # naive
        ({"context": {"mode": "sleepy"}}, "context.mode"),
        ({"context": {"weekday": 7}}, "context.weekday"),
        ({"context": {"geo_cell": "Moscow Center!"}}, "context.geo_cell"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_event_names_the_field(patch: dict[str, object], field: str) -> None:
    with pytest.raises(SchemaError, match=rf"invalid Event: {field}:"):
        Event.parse({**GOOD_EVENT, **patch})


def test_missing_field_is_named() -> None:
    bad = dict(GOOD_EVENT)
    del bad["item_id"]
    with pytest.raises(SchemaError, match="item_id: Field required"):
        Event.parse(bad)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"service": "amazon"}, "service"),
        ({"category": ["Dairy", " "]}, "category"),
        ({"category": ["a"] * 9}, "category"),
        ({"price": float("inf")}, "price"),
    ],
)
def test_bad_item(patch: dict[str, object], field: str) -> None:
    good = {"item_id": "mm-1", "service": "megamarket", "title": "Phone", "category": ["E"]}
    assert Item.parse(good).has_text
    with pytest.raises(SchemaError, match=rf"invalid Item: {field}"):
        Item.parse({**good, **patch})


def test_records_are_frozen() -> None:
    e = Event.parse(GOOD_EVENT)
    with pytest.raises(ValueError, match="frozen"):
        e.quantity = 3  # type: ignore[misc]


def test_context_from_timestamp() -> None:
    ts = datetime(2025, 12, 31, 23, 30, tzinfo=UTC)
    c = Context.from_timestamp(ts, mode="shopping")
    assert (c.daypart, c.weekday, c.season, c.mode) == ("evening", 2, "winter", "shopping")
    assert daypart_of(datetime(2025, 1, 1, 5)) is Daypart.NIGHT
    assert season_of(datetime(2025, 9, 1)) is Season.AUTUMN
