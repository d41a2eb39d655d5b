from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from userlayer.sdk import Service
from userlayer.tools.data.loaders import CsvMapping, load
from userlayer.tools.exceptions import DataFormatError


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _seq(ds: object, user: str) -> list[str]:
    seqs = ds.sequences()  # type: ignore[attr-defined]
    return seqs[user]  # type: ignore[no-any-return]


def test_sasrec(tmp_path: Path) -> None:
    p = _write(tmp_path / "s.txt", "1 10 11 12\n2 11 13\n\n3\n")
    ds, summary = load("sasrec", p, service=Service.KUPER)
    assert _seq(ds, "1") == ["10", "11", "12"]
    assert summary.events == 5 and summary.users == 2 and summary.items == 4
    assert summary.skipped == {"blank line": 1, "user without items": 1}
    assert ds.meta["timestamps"] == "order"
    assert set(ds.events.column("service").cast(pa.string()).to_pylist()) == {"kuper"}


def test_json(tmp_path: Path) -> None:
    p = _write(tmp_path / "s.json", json.dumps({"7": [3, 1, 2], "8": ["a"], "9": []}))
    ds, summary = load("json", p)
    assert _seq(ds, "7") == ["3", "1", "2"]
    assert summary.skipped == {"user without items": 1}


def test_recbole_with_items(tmp_path: Path) -> None:
    _write(
        tmp_path / "x.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "u1\ti1\t5\t1700000100\nu1\ti2\t4\t1700000000\nu2\ti1\t3\t1700000200\n",
    )
    _write(
        tmp_path / "x.item",
        "item_id:token\ttitle:token_seq\tcategories:token_seq\t"
        "brand:token\tprice:float\ni1\tRed Lipstick\tBeauty Makeup\tAcme\t9.5\n"
        "i2\tFace Cream\tBeauty\tAcme\t\n",
    )
    ds, summary = load("recbole", tmp_path)
    assert _seq(ds, "u1") == ["i2", "i1"]  # sorted by timestamp
    assert ds.meta["timestamps"] == "real"
    assert ds.items.column("title").to_pylist() == ["Red Lipstick", "Face Cream"]
    assert ds.items.column("category").to_pylist()[0] == ["Beauty", "Makeup"]
    assert summary.events == 3


def test_csv_with_mapping(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "e.csv",
        "uid,iid,ts,svc,act,q\n"
        "a,x1,2025-01-02T10:00:00Z,samokat,purchase,2\n"
        "a,x2,1735689600,kuper,view,\n"
        "b,x1,1735689600000,megamarket,add_to_cart,1\n",
    )
    mapping = CsvMapping.parse("user=uid,item=iid,timestamp=ts,service=svc,action=act,quantity=q")
    ds, _ = load("csv", p, mapping=mapping)
    assert _seq(ds, "a") == ["x2", "x1"]
    ev = ds.events
    assert ev.column("quantity").to_pylist() == [1, 2, 1]
    assert ev.column("daypart").cast(pa.string()).to_pylist()[1] == "morning"


@pytest.mark.parametrize(
    ("fmt", "name", "text", "match"),
    [
        ("sasrec", "s.txt", "1 10\n1 11\n", r"s.txt:2: user '1' already given at .*s.txt:1"),
        ("sasrec", "s.txt", "1 a/b\n", "column 'item_id' must match"),
        ("sasrec", "s.txt", "\n\n", "no events found"),
        ("json", "s.json", "[1, 2]", "expected an object"),
        ("json", "s.json", '{"u": [1, {"x": 1}]}', r"user 'u' \(entry 1\): expected a list"),
        ("json", "s.json", '{"u": [1,', r"s.json:1: not valid JSON"),
        ("recbole", "x.inter", "user_id:token\titem_id:token\nu1\n", r"x.inter:2: 1 fields"),
        ("recbole", "x.inter", "user:token\titem_id:token\nu1\ti\n", "no 'user_id' column"),
        ("recbole", "x.inter", "", "empty file"),
        (
            "recbole",
            "x.inter",
            "user_id:token\titem_id:token\ttimestamp:float\nu\ti\tnope\n",
            r"x.inter:2: timestamp 'nope'",
        ),
    ],
)
def test_malformed_input_names_file_and_line(
    tmp_path: Path, fmt: str, name: str, text: str, match: str
) -> None:
    p = _write(tmp_path / name, text)
    with pytest.raises(DataFormatError, match=match):
        load(fmt, p)


@pytest.mark.parametrize(
    ("text", "spec", "match"),
    [
        ("u,i,t\na,b,1\n", "user=u,item=i", r"required field\(s\) \['timestamp'\]"),
        ("u,i,t\na,b,1\n", "user=u,item=i,timestamp=ts", r"column\(s\) \['ts'\] not in header"),
        ("u,i,t\na,b,1,9\n", "user=u,item=i,timestamp=t", "e.csv:2: more fields"),
        ("u,i,t\na,b\n", "user=u,item=i,timestamp=t", "e.csv:2: fewer fields"),
        ("u,i,t\na,b,soon\n", "user=u,item=i,timestamp=t", "e.csv:2: timestamp 'soon'"),
        ("u,i,t\n,b,1\n", "user=u,item=i,timestamp=t", "e.csv:2: empty user"),
        ("u,i,t,q\na,b,1,two\n", "user=u,item=i,timestamp=t,quantity=q", "e.csv:2: quantity 'two'"),
        ("u,i,t,s\na,b,1,ozon\n", "user=u,item=i,timestamp=t,service=s", "column 'service'"),
        ("u,i,t\na,b,1\n", "user=u,item=i,timestamp=t,colour=c", r"unknown field\(s\)"),
        ("u,i,t\na,b,1\n", "user=u,item", "'item' is not field=column"),
    ],
)
def test_csv_errors(tmp_path: Path, text: str, spec: str, match: str) -> None:
    p = _write(tmp_path / "e.csv", text)
    with pytest.raises(DataFormatError, match=match):
        load("csv", p, mapping=CsvMapping.parse(spec))


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="unknown format 'parquet'; known formats"):
        load("parquet", tmp_path)
    with pytest.raises(DataFormatError, match="no such file"):
        load("json", tmp_path / "nope.json")
    with pytest.raises(DataFormatError, match="needs a column mapping"):
        load("csv", _write(tmp_path / "e.csv", "a\n"))


def test_recbole_items_missing_from_item_file(tmp_path: Path) -> None:
    _write(tmp_path / "x.inter", "user_id:token\titem_id:token\nu1\ti1\nu1\ti9\n")
    _write(tmp_path / "x.item", "item_id:token\ti1\n")
    with pytest.raises(DataFormatError, match="missing from the item file"):
        load("recbole", tmp_path / "x.inter")


def test_beauty_loads(beauty_dir: Path) -> None:
    _, summary = load("json", beauty_dir / "inter.json")
    assert (summary.users, summary.items, summary.events) == (22363, 12101, 198502)
    assert summary.skipped == {}
