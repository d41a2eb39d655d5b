from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from userlayer.tools.data.format import Dataset, build_events, validate_events
from userlayer.tools.data.synth import SynthResult
from userlayer.tools.exceptions import DataFormatError


def _cols(n: int = 3) -> dict[str, list[object]]:
    return {
        "user_id": ["u1"] * n,
        "service": ["kuper"] * n,
        "item_id": [f"i{k}" for k in range(n)],
        "action": ["purchase"] * n,
        "timestamp": [1_700_000_000_000 - k for k in range(n)],
    }


def test_build_events_defaults_and_sorts() -> None:
    t = build_events(_cols())
    assert t.column("mode").cast(pa.string()).to_pylist() == ["unspecified"] * 3
    assert t.column("item_id").cast(pa.string()).to_pylist() == ["i2", "i1", "i0"]
    assert t.column("quantity").to_pylist() == [1, 1, 1]


_FULL_ROW = {"quantity": 1, "price": 1.0, "mode": "hungry", "weekday": 0}


@pytest.mark.parametrize(
    ("column", "value", "match"),
    [
        ("service", "ozon", "column 'service' must be one of"),
        ("action", "buy", "column 'action' must be one of"),
        ("mode", "sleepy", "column 'mode'"),
        ("quantity", 0, "column 'quantity' must be >= 1"),
        ("price", -5.0, "column 'price' must be finite"),
        ("price", float("nan"), "column 'price' must be finite"),
        ("weekday", 9, "column 'weekday' must be in 0..6"),
        ("user_id", "bad user", "column 'user_id' must match"),
        ("item_id", "", "column 'item_id' must match"),
    ],
)
def test_bad_column_values_name_column_and_row(column: str, value: object, match: str) -> None:
    cols = {**_cols(), **{k: [v] * 3 for k, v in _FULL_ROW.items()}}
    cols[column] = [cols[column][0], value, cols[column][2]]
    with pytest.raises(DataFormatError, match=match) as e:
        build_events(cols)
    assert "1 bad row(s), first at row 1" in str(e.value)


def test_missing_and_unknown_columns() -> None:
    table = build_events(_cols())
    with pytest.raises(DataFormatError, match=r"missing column\(s\) \['price'\]"):
        validate_events(table.drop_columns(["price"]))
    with pytest.raises(DataFormatError, match=r"unknown column\(s\) \['extra'\]"):
        validate_events(table.append_column("extra", pa.array([1, 2, 3])))
    with pytest.raises(DataFormatError, match="must not be null"):
        validate_events(
            table.set_column(
                table.schema.get_field_index("action"),
                "action",
                pa.array(["view", None, "view"]).dictionary_encode(),
            )
        )


def test_round_trip(tmp_path: Path, small_synth: SynthResult) -> None:
    ds = small_synth.dataset
    ds.save(tmp_path / "d")
    again = Dataset.load(tmp_path / "d")
    assert again.events.equals(ds.events)
    assert again.items.equals(ds.items)
    assert again.meta["counts"]["events"] == ds.events.num_rows
    again.check_items_known()


def test_load_refuses_non_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="not a dataset directory"):
        Dataset.load(tmp_path)
    (tmp_path / "meta.json").write_text('{"format": "other"}')
    for name in ("events.parquet", "items.parquet"):
        (tmp_path / name).write_bytes(b"garbage")
    with pytest.raises(DataFormatError, match="cannot read dataset"):
        Dataset.load(tmp_path)


def test_events_with_unknown_items_are_reported(small_synth: SynthResult) -> None:
    ds = small_synth.dataset
    items = ds.items.slice(0, 10)
    broken = Dataset(ds.events, items)
    with pytest.raises(DataFormatError, match="refers to items missing"):
        broken.check_items_known()


def test_large_file_round_trip(tmp_path: Path) -> None:
    """A million events write, read back and validate (timing lives in `userlayer bench`)."""
    n = 1_000_000
    rng = np.random.default_rng(0)
    cols = {
        "user_id": [f"u{k}" for k in rng.integers(0, 20_000, n)],
        "service": np.array(["samokat", "kuper", "megamarket"])[rng.integers(0, 3, n)].tolist(),
        "item_id": [f"i{k}" for k in rng.integers(0, 12_000, n)],
        "action": ["purchase"] * n,
        "timestamp": rng.integers(1_600_000_000_000, 1_700_000_000_000, n),
    }
    events = build_events(cols)
    ids = sorted(set(cols["item_id"]))
    items = pa.table(
        {
            "item_id": ids,
            "service": ["kuper"] * len(ids),
            "title": [""] * len(ids),
            "category": [[]] * len(ids),
            "brand": [""] * len(ids),
            "price": pa.nulls(len(ids), pa.float64()),
        }
    )
    Dataset(events, items).save(tmp_path)
    again = Dataset.load(tmp_path)
    assert again.events.num_rows == n
