from __future__ import annotations

import json
from pathlib import Path

import pytest

from userlayer.sdk import SemanticIdError, SemanticIdTable, Service


def _table() -> SemanticIdTable:
    codes = {
        "a": (0, 0, 0),
        "b": (0, 0, 1),
        "c": (0, 1, 0),
        "d": (1, 0, 0),
        "e": (2, 1, 0),
    }
    services = {
        "a": Service.SAMOKAT,
        "b": Service.KUPER,
        "c": Service.SAMOKAT,
        "d": Service.MEGAMARKET,
        "e": Service.KUPER,
    }
    return SemanticIdTable(codes=codes, services=services, level_sizes=(3, 2, 2))


def _walk(trie, prefix, service):  # type: ignore[no-untyped-def]
    """Every complete ID reachable by only taking allowed codes."""
    if len(prefix) == trie.depth:
        yield tuple(prefix)
        return
    for code in trie.allowed(prefix, service):
        yield from _walk(trie, [*prefix, code], service)


@pytest.mark.parametrize("service", [None, *Service])
def test_trie_admits_exactly_the_real_items(service: Service | None) -> None:
    table = _table()
    trie = table.trie()
    reached = set(_walk(trie, [], service))
    expected = {
        c for i, c in table.codes.items() if service is None or table.services[i] == service
    }
    assert reached == expected
    for codes in reached:
        assert trie.is_item(codes, service)


def test_trie_dead_prefixes_and_depth() -> None:
    trie = _table().trie()
    assert trie.allowed([1], Service.SAMOKAT) == []
    assert trie.allowed([0, 0]) == [0, 1]
    assert trie.allowed([0, 0], Service.KUPER) == [1]
    assert not trie.is_item((2, 0, 0))
    assert not trie.is_item((0, 0, 0), Service.KUPER)
    with pytest.raises(SemanticIdError, match="no next level"):
        trie.allowed([0, 0, 0])


@pytest.mark.parametrize(
    ("codes", "sizes", "match"),
    [
        ({"a": (0, 0), "b": (0, 0)}, (2, 2), "share Semantic ID"),
        ({"a": (0, 0), "b": (0,)}, (2, 2), "expected 2 levels"),
        ({"a": (0, 2), "b": (0, 1)}, (2, 2), r"outside \[0, 2\)"),
        ({"a": (0, -1), "b": (0, 1)}, (2, 2), "outside"),
        ({"a": (0, 0)}, (2, 0), "positive"),
    ],
)
def test_invalid_tables(
    codes: dict[str, tuple[int, ...]], sizes: tuple[int, ...], match: str
) -> None:
    with pytest.raises(SemanticIdError, match=match):
        SemanticIdTable(
            codes=codes, services=dict.fromkeys(codes, Service.KUPER), level_sizes=sizes
        )


def test_json_round_trip(tmp_path: Path) -> None:
    table = _table()
    table.save(tmp_path / "sids.json")
    again = SemanticIdTable.load(tmp_path / "sids.json")
    assert again.codes == table.codes and again.services == table.services
    assert again.level_sizes == table.level_sizes
    assert again.item_of((2, 1, 0)) == "e"


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ([], "not a userlayer.sids/1"),
        ({"format": "userlayer.sids/1", "items": {}}, "needs 'items'"),
        (
            {"format": "userlayer.sids/1", "level_sizes": [2], "items": {"a": {"codes": [0]}}},
            "bad entry",
        ),
        (
            {
                "format": "userlayer.sids/1",
                "level_sizes": [2],
                "items": {"a": {"codes": ["0"], "service": "kuper"}},
            },
            "list of integers",
        ),
        (
            {
                "format": "userlayer.sids/1",
                "level_sizes": [2],
                "items": {"a": {"codes": [0], "service": "ozon"}},
            },
            "bad entry",
        ),
    ],
)
def test_bad_documents(tmp_path: Path, doc: object, match: str) -> None:
    p = tmp_path / "s.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(SemanticIdError, match=match):
        SemanticIdTable.load(p)


def test_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(SemanticIdError, match="cannot read"):
        SemanticIdTable.load(tmp_path / "x.json")
