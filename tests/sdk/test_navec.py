"""navec text vectors for Russian catalogs, and the choice of encoder by script."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from userlayer.sdk.exceptions import TextEncoderError
from userlayer.sdk.navec import cyrillic_share, navec_embeddings, navec_path
from userlayer.tools.exceptions import ToolsError
from userlayer.tools.sids.embed import resolve_encoder, text_embeddings

pytest.importorskip("navec", reason="navec comes with the sids-text extra")

FOOD = [
    "Молоко Prostokvashino 3,2%, 930 мл",
    "Кефир Danone фермерское, 1 л",
    "Творог Valio классический, 200 г",
    "Сыр российский Savushkin копчёный, 300 г",
]
TECH = [
    "Смартфон Samsung 128 ГБ, чёрный",
    "Беспроводные наушники Sony с шумоподавлением, белый",
    "Ноутбук Lenovo игровой, серый",
    "Планшет Xiaomi компактный, синий",
]


def test_cyrillic_share_and_auto_choice() -> None:
    assert cyrillic_share(FOOD) > 0.6
    assert cyrillic_share(["Milk 3.2%, 930 ml", "Smartphone 128 GB"]) == 0.0
    assert cyrillic_share(["123", ""]) == 0.0
    assert resolve_encoder(FOOD + TECH) == "navec"
    assert resolve_encoder(["Prostokvashino Milk 3.2%, 930 ml"]) == "minilm"
    assert resolve_encoder(FOOD, "minilm") == "minilm"
    with pytest.raises(ToolsError, match="text encoder"):
        text_embeddings(FOOD, encoder="bert")  # type: ignore[arg-type]


def test_same_shelf_titles_are_nearer_than_other_shelves() -> None:
    enc = navec_embeddings(FOOD + TECH)
    x = enc.vectors
    assert x.shape == (8, 300) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    sims = x @ x.T
    within = np.mean([sims[i, j] for g in (range(4), range(4, 8)) for i in g for j in g if i != j])
    across = np.mean([sims[i, j] for i in range(4) for j in range(4, 8)])
    assert within > across + 0.2, (within, across)
    assert 0 < enc.known < enc.words and enc.empty == 0  # brands and numbers are not words


def test_unknown_tokens_keep_titles_apart_and_brands_together() -> None:
    titles = [
        "Молоко Prostokvashino 3,2%, 930 мл",
        "Молоко Prostokvashino 3,2%, 500 мл",
        "Молоко Ekoniva 3,2%, 930 мл",
        "Молоко Prostokvashino 1,5%, 1 л",
    ]
    skipped = navec_embeddings(titles, oov_scale=0.0).vectors
    hashed = navec_embeddings(titles).vectors
    assert np.allclose(skipped[0], skipped[1])  # only words: the pack size is lost
    assert not np.allclose(hashed[0], hashed[1])
    sims = hashed @ hashed.T
    assert sims[0, 3] > sims[2, 3]  # the same brand leans together
    again = navec_embeddings(titles).vectors
    np.testing.assert_array_equal(hashed, again)  # unknown-token vectors are fixed, not drawn


def test_other_weights_are_refused(tmp_path: Path) -> None:
    fake = tmp_path / "navec.tar"
    shutil.copyfile(navec_path(), fake)
    with fake.open("ab") as f:
        f.write(b"\0")
    with pytest.raises(TextEncoderError, match=r"natasha==1\.6\.0"):
        navec_embeddings(FOOD, path=fake)


def test_sids_build_uses_navec_for_a_russian_catalog() -> None:
    from userlayer.tools.data.synth import SynthConfig, synthesize
    from userlayer.tools.sids import SidConfig, build_semantic_ids

    ds = synthesize(SynthConfig(users=10, language="ru")).dataset
    table, report = build_semantic_ids(ds, SidConfig(codebook_size=32, embedding="text"))
    assert "navec" in report.source and len(table) == ds.items.num_rows
    assert report.codes_used[0] == 32


def test_decomposed_unicode_and_bad_scales() -> None:
    import unicodedata

    nfc = ["Йогурт Danone клубника, 130 г", "Кофе в зёрнах Jardin арабика, 1 кг"]
    nfd = [unicodedata.normalize("NFD", t) for t in nfc]
    np.testing.assert_allclose(navec_embeddings(nfd).vectors, navec_embeddings(nfc).vectors)
    for bad in (-1.0, float("inf")):
        with pytest.raises(TextEncoderError, match="oov_scale"):
            navec_embeddings(nfc, oov_scale=bad)
