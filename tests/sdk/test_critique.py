"""Critiques: parsing in Russian and English, flags for what is ignored, the catalog's masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from userlayer.sdk.api import MAX_CRITIQUE
from userlayer.sdk.critique import (
    CATALOG_FILE,
    CatalogIndex,
    ItemAttributes,
    catalog_document,
    load_catalog,
    parse_critique,
)
from userlayer.sdk.exceptions import CatalogError


@pytest.mark.parametrize(
    ("text", "lang", "price", "brand", "without", "steer"),
    [
        ("подешевле", "ru", "lower", False, (), ()),
        ("Без мяса, пожалуйста", "ru", None, False, ("meat",), ()),
        ("не хочу мяса", "ru", None, False, ("meat",), ()),
        ("хочу другой бренд", "ru", None, True, (), ()),
        ("не этот бренд и без сахара", "ru", None, True, ("sugar",), ()),
        ("без глютена и без молока", "ru", None, False, ("gluten", "dairy"), ()),
        ("без кинзы", "ru", None, False, ("кинз",), ()),
        ("не так дорого", "ru", "lower", False, (), ()),
        ("подороже, премиум", "ru", "higher", False, (), ()),
        ("для ребёнка", "ru", None, False, (), ("kids",)),
        ("полезнее и подешевле", "ru", "lower", False, (), ("healthier",)),
        ("побольше упаковку", "ru", None, False, (), ("bigger",)),
        ("no sugar", "en", None, False, ("sugar",), ()),
        ("something cheaper without nuts", "en", "lower", False, ("nuts",), ()),
        ("not so expensive", "en", "lower", False, (), ()),
        ("I don't want fish", "en", None, False, ("fish",), ()),
        ("gluten-free please", "en", None, False, ("gluten",), ()),
        ("another brand, no meat", "en", None, True, ("meat",), ()),
        ("more expensive", "en", "higher", False, (), ()),
        ("without olives", "en", None, False, ("olive",), ()),  # a word prefix
        ("for a kid, bigger pack", "en", None, False, (), ("kids", "bigger")),
    ],
)
def test_parses_russian_and_english(
    text: str,
    lang: str,
    price: str | None,
    brand: bool,
    without: tuple[str, ...],
    steer: tuple[str, ...],
) -> None:
    c = parse_critique(text)
    assert (c.language, c.price, c.other_brand, c.without, c.steer) == (
        lang,
        price,
        brand,
        without,
        steer,
    )
    assert c.understood and not c.flags


@pytest.mark.parametrize(
    ("text", "flag"),
    [
        ("不要肉", "unknown language"),
        ("1234 !!", "unknown language"),
        ("cheaper but more expensive", "contradictory: cheaper and more expensive"),
        ("подешевле, но подороже", "contradictory: cheaper and more expensive"),
        ("bigger but smaller", "contradictory: bigger and smaller"),
        ("asdf qwer", "not understood"),
    ],
)
def test_what_cannot_be_used_is_flagged_not_raised(text: str, flag: str) -> None:
    c = parse_critique(text)
    assert any(f.startswith(flag) for f in c.flags), c.flags
    assert c.price is None and "bigger" not in c.steer


def test_too_long_is_refused() -> None:
    with pytest.raises(ValueError, match=f"at most {MAX_CRITIQUE}"):
        parse_critique("x" * (MAX_CRITIQUE + 1))


def _catalog() -> CatalogIndex:
    attrs = {
        "a": ItemAttributes("Milk 3.2%, 1 l", ("Dairy", "Milk"), "Prostokvashino", 100.0),
        "b": ItemAttributes("Milk 2.5%, 1 l", ("Dairy", "Milk"), "Domik", 80.0),
        "c": ItemAttributes("Yogurt No Sugar, 270 g", ("Dairy", "Yogurt"), "Ehrmann", 60.0),
        "d": ItemAttributes("Shampoo Mint, 250 ml", ("Beauty", "Hair"), "Head", 90.0),
        "e": ItemAttributes("Ham Slices, 150 g", ("Meat", "Sausages"), "Velikoluksky", 150.0),
        "f": ItemAttributes("Chocolate Dark, 90 g", ("Snacks", "Chocolate"), "Alpen Gold", None),
        "g": ItemAttributes("Колбаса докторская, 400 г", ("Мясо", "Колбасы"), "Останкино", 70.0),
        "h": ItemAttributes("Sugar, 1 kg", ("Pantry", "Baking"), "", 50.0),
    }
    return CatalogIndex(sorted(attrs), attrs)


def _allowed(v: object, cat: CatalogIndex) -> set[str]:
    allowed = getattr(v, "allowed")  # noqa: B009
    return {it for it, ok in zip(cat.items, allowed, strict=True) if ok}


def test_price_is_relative_to_the_sessions_last_priced_item() -> None:
    cat = _catalog()
    v = cat.apply(parse_critique("подешевле"), ["e", "a", "f", "unknown-item"])  # f: no price
    assert v.applied == ("price < 100",)
    assert _allowed(v, cat) == {"b", "c", "d", "g", "h"}  # f's price is unknown: excluded
    v = cat.apply(parse_critique("more expensive"), ["b"])
    assert _allowed(v, cat) == {"a", "d", "e"}
    v = cat.apply(parse_critique("cheaper"), ["f"])
    assert v.allowed is None and any("no priced item" in f for f in v.flags)


def test_another_brand_and_concepts_as_word_prefixes() -> None:
    cat = _catalog()
    v = cat.apply(parse_critique("другой бренд"), ["b", "a"])
    assert v.applied == ("brand is not 'prostokvashino'",)
    assert _allowed(v, cat) == set(cat.items) - {"a"}
    v = cat.apply(parse_critique("без мяса"), [])
    assert _allowed(v, cat) == set(cat.items) - {"e", "g"}  # ham, колбаса; not the shampoo
    v = cat.apply(parse_critique("no sugar"), [])
    assert _allowed(v, cat) == set(cat.items) - {"f", "h"}  # "No Sugar" yogurt is free of it
    v = cat.apply(parse_critique("без молока и подешевле"), ["d"])
    assert _allowed(v, cat) == {"e", "g", "h"} - {"e"}  # price < 90 and no dairy
    v = cat.apply(parse_critique("for a kid"), ["a"])
    assert v.allowed is None and v.steer is not None and not v.applied


def test_steers_rank_by_pack_size_and_health() -> None:
    cat = _catalog()
    big = cat.steer(["bigger"])
    assert big[cat.items.index("h")] > big[cat.items.index("f")]  # 1 kg vs 90 g
    healthy = cat.steer(["healthier"])
    assert healthy[cat.items.index("c")] > healthy[cat.items.index("f")]  # no sugar vs chocolate


def test_catalog_file_round_trip_and_bad_files(tmp_path: Path) -> None:
    cat = _catalog()
    doc = catalog_document(dict(cat.attributes))
    (tmp_path / CATALOG_FILE).write_text(json.dumps(doc, ensure_ascii=False), "utf-8")
    back = load_catalog(tmp_path, cat.items)
    assert back is not None
    assert np.array_equal(back.price, cat.price, equal_nan=True) and back.text == cat.text
    assert load_catalog(tmp_path / "none", cat.items) is None
    (tmp_path / CATALOG_FILE).write_text('{"format": "other", "items": {}}')
    with pytest.raises(CatalogError, match="not a userlayer catalog"):
        load_catalog(tmp_path, cat.items)
    (tmp_path / CATALOG_FILE).write_text("{")
    with pytest.raises(CatalogError, match="unreadable"):
        load_catalog(tmp_path, cat.items)


@pytest.mark.parametrize(
    ("text", "price", "without", "steer"),
    [
        ("без мяса без рыбы", None, ("meat", "fish"), ()),
        ("без мяса и рыбы", None, ("meat", "fish"), ()),
        ("no meat or fish", None, ("meat", "fish"), ()),
        ("no meat no fish", None, ("meat", "fish"), ()),
        ("не дороже", "lower", (), ()),
        ("not more expensive", "lower", (), ()),
        ("не дешевле", "higher", (), ()),
        ("not cheap", "higher", (), ()),
        ("too expensive", "lower", (), ()),
        ("I don’t want meat", None, ("meat",), ()),  # a typographic apostrophe
        ("I do not like fish", None, ("fish",), ()),
        ("без лука", None, ("лук",), ()),  # a case ending off: "лук" as a prefix
        ("не меньше", None, (), ("bigger",)),
    ],
)
def test_negations_conjunctions_and_case_endings(
    text: str, price: str | None, without: tuple[str, ...], steer: tuple[str, ...]
) -> None:
    """Defects of the first parser: the second of two exclusions was dropped, and a
    negated comparative ("не дороже") was read as its opposite."""
    c = parse_critique(text)
    assert (c.price, c.without, c.steer) == (price, without, steer)


@pytest.mark.parametrize("text", ["no thanks", "kidney beans", "not for kids"])
def test_words_that_only_look_like_a_critique(text: str) -> None:
    c = parse_critique(text)
    assert not c.understood and c.flags == ("not understood: ignored",)


def test_exemptions_are_whole_phrases_and_cover_only_themselves() -> None:
    attrs = {
        "granulated": ItemAttributes("Domino Sugar Granulated, 1 kg"),
        "yogurt": ItemAttributes("Yogurt No Sugar, 270 g", ("Dairy", "Yogurt")),
        "oat": ItemAttributes("Oat Milk Drink, 1 l"),
        "oat-cheese": ItemAttributes("Oat milk chocolate with cheese"),
        "walnuts": ItemAttributes("Walnuts Chilean, 200 g"),
        "blank": ItemAttributes(),
    }
    cat = CatalogIndex(sorted(attrs), attrs)

    def allowed(text: str) -> set[str]:
        v = cat.apply(parse_critique(text), [])
        assert v.allowed is not None
        return {it for it, ok in zip(cat.items, v.allowed, strict=True) if ok}

    assert allowed("no sugar") == {"yogurt", "oat", "walnuts"}  # "domino sugar" is sugar
    # "oat milk" is a plant milk; the cheese outside that phrase is dairy
    assert allowed("без молока") == {"granulated", "oat", "walnuts"}
    assert "walnuts" not in allowed("no nuts")
    assert "blank" not in allowed("без орехов")  # nothing shows it is free of nuts
    v = cat.apply(parse_critique("без кинзы"), [])
    assert v.allowed is None and v.flags == (
        "without кинз: no item of the catalog mentions it; ignored",
    )
    v = cat.apply(parse_critique("no walnuts"), [])
    assert v.applied == ("without walnut (1 item)",)


def test_free_words_are_cached_within_a_bound() -> None:
    attrs = {f"i{n}": ItemAttributes(f"word{n} thing") for n in range(50)}
    cat = CatalogIndex(sorted(attrs), attrs)
    cat.CACHE = 8  # type: ignore[misc]
    for n in range(30):
        cat.mentions(f"word{n}")
    assert len(cat._free) == 8
    m = cat.mentions("word3")
    assert m.sum() == 11  # word3, word30 .. word39: a prefix
    m[:] = True  # the caller's copy: the cache is not changed through it
    assert cat.mentions("word3").sum() == 11


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ("[]", "not a userlayer catalog"),
        ('{"format": "userlayer.catalog/1", "items": []}', "not an object"),
        ('{"format": "userlayer.catalog/1", "items": {"a": {"price": true}}}', "price True"),
        ('{"format": "userlayer.catalog/1", "items": {"a": {"price": NaN}}}', "price nan"),
        ('{"format": "userlayer.catalog/1", "items": {"a": {"price": -1}}}', "price -1"),
    ],
)
def test_bad_catalog_files_are_named(tmp_path: Path, doc: str, match: str) -> None:
    (tmp_path / CATALOG_FILE).write_text(doc)
    with pytest.raises(CatalogError, match=match):
        load_catalog(tmp_path, ["a"])
