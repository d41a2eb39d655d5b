"""Fuzzing the event parsers: event records, request bodies and public-format files.

Whatever comes in, the parsers answer with their domain error
(``SchemaError`` for records and bodies, ``DataFormatError`` for files) or
with valid data; never another exception. ``USERLAYER_FUZZ_EXAMPLES`` sets
the count (``make fuzz``: 10,000 per property).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from tests.fuzzing import fuzz_settings, json_values
from userlayer.sdk.api import RecommendRequest
from userlayer.sdk.exceptions import SchemaError
from userlayer.sdk.schemas import Event
from userlayer.tools.data.loaders import CsvMapping, load
from userlayer.tools.exceptions import DataFormatError

FUZZ = fuzz_settings(HealthCheck.function_scoped_fixture)
_json = json_values(text_size=30, key_size=10, max_leaves=10)
EVENT = {
    "user_id": "u1",
    "service": "samokat",
    "item_id": "sm-1",
    "action": "purchase",
    "timestamp": "2026-01-01T10:00:00Z",
    "quantity": 2,
    "price": 3.5,
    "context": {"mode": "hungry", "weekday": 3},
}


@st.composite
def _record(draw: st.DrawFn, base: dict[str, Any]) -> Any:
    if draw(st.integers(0, 4)) == 0:
        return draw(_json)
    rec = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from([*sorted(rec), "extra"]))
        if draw(st.booleans()):
            rec.pop(key, None)
        else:
            rec[key] = draw(_json)
    return rec


@FUZZ
@given(_record(EVENT))
def test_event_parse(rec: Any) -> None:
    try:
        e = Event.parse(rec)
    except SchemaError:
        return
    assert e.user_id and e.quantity >= 1


@FUZZ
@given(_record({"user_id": "u1", "service": "kuper", "session": ["a"], "k": 5}))
def test_request_body(rec: Any) -> None:
    try:
        r = RecommendRequest.model_validate(rec) if isinstance(rec, dict) else None
    except ValueError:  # pydantic's ValidationError: the API turns it into a 422
        return
    assert r is None or r.k >= 1


_lines = st.lists(
    st.one_of(
        st.text(max_size=40),
        st.lists(st.integers(-5, 10**6).map(str) | st.text(max_size=6), max_size=6).map(" ".join),
    ),
    max_size=12,
).map("\n".join)


@FUZZ
@given(st.sampled_from(["sasrec", "json", "csv"]), _lines | st.builds(json.dumps, _json))
def test_public_format_files(fmt: str, text: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"in.{fmt}"
        p.write_text(text, "utf-8")
        mapping = CsvMapping({"user": "u", "item": "i", "timestamp": "t"}) if fmt == "csv" else None
        try:
            ds, summary = load(fmt, p, mapping=mapping)
        except DataFormatError:
            return
        assert summary.lines >= 0 and len(ds.events) >= 0
