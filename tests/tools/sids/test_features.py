from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from userlayer.tools.exceptions import DataFormatError
from userlayer.tools.sids.features import codes_digest, load_item_embedding, save_item_embedding

T = codes_digest({"a": [0, 1], "b": [1, 0]})


def test_rows_come_back_in_the_asked_order_at_unit_mean_square_norm(tmp_path: Path) -> None:
    emb = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    ids = ["a", "b", "c", "d", "e"]
    save_item_embedding(tmp_path / "e.safetensors", ids, emb, "test", T)
    got = load_item_embedding(tmp_path / "e.safetensors", ["e", "a", "c"], T)
    scale = np.sqrt((emb.astype(np.float64) ** 2).sum(1).mean())
    np.testing.assert_allclose(got, emb[[4, 0, 2]] / scale, rtol=1e-6)
    assert got.dtype == np.float32


def test_the_digest_ignores_order_and_sees_any_code() -> None:
    assert codes_digest({"b": [1, 0], "a": [0, 1]}) == T
    assert codes_digest({"a": [0, 1], "b": [1, 1]}) != T


def test_bad_files_other_tables_and_missing_items_are_named(tmp_path: Path) -> None:
    ids = ["a", "b"]
    with pytest.raises(DataFormatError, match="one finite row per item"):
        save_item_embedding(tmp_path / "x", ids, np.zeros((3, 2)), "test", T)
    with pytest.raises(DataFormatError, match="one finite row per item"):
        save_item_embedding(tmp_path / "x", ids, np.full((2, 2), np.nan), "test", T)
    with pytest.raises(DataFormatError, match="distinct"):
        save_item_embedding(tmp_path / "x", ["a", "a"], np.ones((2, 2)), "test", T)
    with pytest.raises(DataFormatError, match="no item embedding at"):
        load_item_embedding(tmp_path / "absent", ids, T)
    save_item_embedding(tmp_path / "e", ids, np.ones((2, 2)), "test", T)
    with pytest.raises(DataFormatError, match="no row for 1 items"):
        load_item_embedding(tmp_path / "e", ["a", "z"], T)
    with pytest.raises(DataFormatError, match="another Semantic ID table"):
        load_item_embedding(tmp_path / "e", ids, codes_digest({"a": [0, 1], "b": [1, 1]}))
    (tmp_path / "junk").write_bytes(b"not a safetensors file")
    with pytest.raises(DataFormatError, match="not an item embedding file"):
        load_item_embedding(tmp_path / "junk", ids, T)
    save_file({"embedding": np.ones((2, 2), np.float32)}, str(tmp_path / "other"))
    with pytest.raises(DataFormatError, match="format"):
        load_item_embedding(tmp_path / "other", ids, T)
    one = np.ones((2, 2), np.float32)
    for name, rows in [("short", ["a"]), ("dup", ["a", "a"]), ("scalar", 5)]:
        meta = {"format": "userlayer.item_embedding/1", "ids": json.dumps(rows), "table": T}
        save_file({"embedding": one}, str(tmp_path / name), metadata=meta)
        with pytest.raises(DataFormatError, match="ids"):
            load_item_embedding(tmp_path / name, ids, T)
