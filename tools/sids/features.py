"""The item embedding a Semantic ID table was built from, kept as fixed item features.

``userlayer sids build --save-embedding`` writes the vectors it quantized (after
normalizing and PCA) beside the table, so that pretraining can give the base
one fixed feature vector per catalog item (``ModelConfig.item_features``):
items that share codes, or rare items whose codes the model has seen little,
still differ by where the co-occurrence (or text) embedding put them. The
file is safetensors (never a pickle): one float32 tensor ``embedding`` and, in
its metadata, the item ids in row order (JSON) and a digest of the table built
with it, so that features are never paired with another build's IDs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from userlayer.tools.exceptions import DataFormatError

__all__ = [
    "EMBEDDING_FILE",
    "FEATURES_FORMAT",
    "codes_digest",
    "load_item_embedding",
    "save_item_embedding",
]

FEATURES_FORMAT = "userlayer.item_embedding/1"
EMBEDDING_FILE = "item_embedding.safetensors"


def codes_digest(codes: Mapping[str, Sequence[int]]) -> str:
    """A digest of a Semantic ID table's codes (item id -> codes), whatever their order."""
    doc = json.dumps(sorted((str(i), [int(c) for c in cs]) for i, cs in codes.items()))
    return hashlib.sha256(doc.encode("utf-8")).hexdigest()


def save_item_embedding(
    path: str | Path, ids: list[str], emb: np.ndarray, source: str, table_digest: str
) -> None:
    """Write ``emb`` (one row per id of ``ids``) scaled to unit mean squared row norm.

    ``table_digest`` (:func:`codes_digest`) names the table built from it.

    Raises:
        DataFormatError: rows and ids differ in number, or values are not finite.
    """
    if emb.ndim != 2 or len(emb) != len(ids) or not np.isfinite(emb).all():
        raise DataFormatError(
            f"an item embedding needs one finite row per item: {emb.shape} for {len(ids)} ids"
        )
    x = emb.astype(np.float64)
    x /= max(float(np.sqrt((x**2).sum(1).mean())), 1e-12)
    if len(set(ids)) != len(ids):
        raise DataFormatError("an item embedding's ids should be distinct")
    meta = {
        "format": FEATURES_FORMAT,
        "ids": json.dumps(ids),
        "source": source,
        "table": table_digest,
    }
    save_file({"embedding": x.astype(np.float32)}, str(path), metadata=meta)


def load_item_embedding(path: str | Path, ids: list[str], table_digest: str) -> np.ndarray:
    """The embedding's rows for ``ids``, in that order: (len(ids), dim) float32.

    ``table_digest`` (:func:`codes_digest`) is the table's the features are for.

    Raises:
        DataFormatError: no file there, not such a file, made with another table,
            or an id of ``ids`` it has no row for.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(
            f"no item embedding at {path}: run `userlayer sids build --save-embedding`"
        )
    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
            emb = f.get_tensor("embedding")
    except (OSError, SafetensorError) as e:
        raise DataFormatError(f"{path} is not an item embedding file: {e}") from e
    if meta.get("format") != FEATURES_FORMAT:
        raise DataFormatError(
            f"{path} has format {meta.get('format')!r}, expected {FEATURES_FORMAT!r}"
        )
    if meta.get("table") != table_digest:
        raise DataFormatError(
            f"{path} was built with another Semantic ID table: build the IDs and the "
            "embedding together (`userlayer sids build --save-embedding`)"
        )
    try:
        rows = json.loads(meta["ids"])
    except (KeyError, ValueError) as e:
        raise DataFormatError(f"{path} has no readable item ids: {e}") from e
    if not isinstance(rows, list) or len(set(map(str, rows))) != len(rows):
        raise DataFormatError(f"{path}: its ids should be a list of distinct item ids")
    if emb.ndim != 2 or len(rows) != len(emb) or not np.isfinite(emb).all():
        raise DataFormatError(
            f"{path}: {len(rows)} ids for an embedding of shape {emb.shape} (finite values)"
        )
    where = {str(i): n for n, i in enumerate(rows)}
    missing = [i for i in ids if i not in where]
    if missing:
        raise DataFormatError(
            f"{path} has no row for {len(missing)} items of the table (e.g. {missing[:3]})"
        )
    out: np.ndarray = emb[[where[i] for i in ids]].astype(np.float32)
    return out
