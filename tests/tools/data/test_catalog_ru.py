"""The Russian catalog: the same items as the English one, in the services' language."""

from __future__ import annotations

import re

import numpy as np
import pytest

from userlayer.sdk.critique import CatalogIndex, parse_critique
from userlayer.sdk.schemas import Service
from userlayer.tools.data.catalog import LEAVES, make_catalog
from userlayer.tools.data.catalog_ru import NOUNS, PATHS, VARIANTS, russian_size, russian_text
from userlayer.tools.data.synth import SynthConfig, synthesize
from userlayer.tools.exceptions import ToolsError

SIZES = {Service.SAMOKAT: 300, Service.KUPER: 300, Service.MEGAMARKET: 400}


def test_every_catalog_word_has_russian_text() -> None:
    for leaf in LEAVES:
        for noun in leaf.nouns:
            for variant in leaf.variants:
                for size in leaf.sizes:
                    title, path = russian_text(leaf.path, noun, "Brand", variant, size)
                    assert re.search("[а-яё]", title.lower()), title
                    assert len(path) == len(leaf.path) + 1
    assert set(PATHS) >= {p for leaf in LEAVES for p in leaf.path}
    assert set(NOUNS) >= {n for leaf in LEAVES for n in leaf.nouns}
    assert set(VARIANTS) >= {v for leaf in LEAVES for v in leaf.variants if "%" not in v}


def test_sizes_read_as_russian_shops_write_them() -> None:
    assert russian_size("1.4 l") == "1,4 л"
    assert russian_size("930 ml") == "930 мл"
    assert russian_size("4 pcs") == "4 шт"
    assert russian_size("XL") == "XL"
    with pytest.raises(KeyError, match="Russian text"):
        russian_text(("Dairy",), "Unknown Noun", "B", "Farm", "1 l")


def test_both_languages_describe_the_same_items() -> None:
    en = make_catalog(np.random.default_rng(3), SIZES)
    ru = make_catalog(np.random.default_rng(3), SIZES)
    assert [(c.item_id, c.price, c.leaf, c.brand) for c in en] == [
        (c.item_id, c.price, c.leaf, c.brand) for c in ru
    ]
    milk = next(c for c in ru if c.category[-1] == "Milk")
    title, category = milk.text("ru")
    assert title.startswith("Молоко ") and category[:2] == ("Молочные продукты", "Молоко")
    assert milk.text("en") == (milk.title, milk.category)


def test_russian_synthetic_dataset_and_its_validation() -> None:
    ds = synthesize(SynthConfig(users=20, language="ru")).dataset
    titles = ds.items.column("title").to_pylist()
    assert all(re.search("[а-яё]", t.lower()) for t in titles)
    with pytest.raises(ToolsError, match="language"):
        SynthConfig(language="de")  # type: ignore[arg-type]


def test_russian_critiques_hold_on_a_russian_catalog() -> None:
    """ "без мяса" and "без рыбы" exclude every meat and fish item of the Russian catalog."""
    res = synthesize(SynthConfig(users=20, language="ru"))
    attrs = res.dataset.attributes()
    index = CatalogIndex(list(attrs), attrs)
    tags = {c.item_id: c.tags for c in res.catalog}
    for text, tag in (("без мяса", "meat"), ("без рыбы", "fish")):
        verdict = index.apply(parse_critique(text), [])
        assert verdict.allowed is not None
        banned = [i for i, ok in zip(index.items, verdict.allowed, strict=True) if not ok]
        tagged = [i for i in attrs if tag in tags[i]]
        assert tagged and set(tagged) <= set(banned), text
