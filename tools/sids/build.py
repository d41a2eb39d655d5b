"""Build or import the Semantic ID table of a dataset's catalog.

``build_semantic_ids`` embeds the items (text when they have it, co-occurrence
otherwise, or both side by side: ``hybrid``), reduces the embedding with PCA,
quantizes it by residual k-means into ``levels`` levels of ``codebook_size``
codes, and appends a final collision level (0, 1, 2, ... among items that
share all earlier codes) so that every ID is unique. ``load_precomputed``
takes a ready table instead. Both return the table and a :class:`SidReport`
(code usage per level, share of items already separated before the collision
level).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from userlayer.sdk.schemas import Service
from userlayer.sdk.semantic_ids import SIDS_FORMAT, SemanticIdTable
from userlayer.tools.data.format import Dataset
from userlayer.tools.exceptions import DataFormatError, ToolsError
from userlayer.tools.sids.embed import (
    ENCODER_NAMES,
    ENCODERS,
    TextEncoder,
    check_embeddings,
    collaborative_embeddings,
    item_texts,
    resolve_encoder,
    text_embeddings,
)
from userlayer.tools.sids.rqkmeans import ResidualKMeans

__all__ = [
    "SidConfig",
    "SidReport",
    "add_collision_level",
    "build_semantic_ids",
    "load_precomputed",
    "quantize_embeddings",
    "training_sequences",
]

Embedding = Literal["auto", "text", "collaborative", "hybrid"]


@dataclass(frozen=True)
class SidConfig:
    """How to build Semantic IDs; validated on creation."""

    levels: int = 3
    codebook_size: int = 256
    embedding: Embedding = "auto"
    # text only: auto (navec for a mostly Cyrillic catalog, else MiniLM), minilm or navec
    text_encoder: TextEncoder = "auto"
    pca_dim: int = 64
    iters: int = 25
    seed: int = 0
    # collaborative only: each user's last `holdout` events stay out of the co-occurrence
    # counts, as they stay out of pretraining (leave-one-out targets never shape the IDs)
    holdout: int = 2
    # scale every item's embedding to unit length before PCA and k-means, so items cluster
    # by direction: a rare item's co-occurrence vector is short, and short vectors otherwise
    # pile into one cluster near the origin whatever their direction (code balance)
    normalize: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.levels <= 8:
            raise ToolsError(f"`levels` should be in [1, 8], got {self.levels}")
        if not 2 <= self.codebook_size <= 65536:
            raise ToolsError(f"`codebook_size` should be in [2, 65536], got {self.codebook_size}")
        if self.embedding not in ("auto", "text", "collaborative", "hybrid"):
            raise ToolsError(
                f"`embedding` should be auto, text, collaborative or hybrid, got {self.embedding!r}"
            )
        if self.text_encoder not in ENCODERS:
            raise ToolsError(
                f"`text_encoder` should be one of {ENCODERS}, got {self.text_encoder!r}"
            )
        if self.pca_dim < 1:
            raise ToolsError(f"`pca_dim` should be positive, got {self.pca_dim}")
        if self.iters < 1:
            raise ToolsError(f"`iters` should be positive, got {self.iters}")
        if self.holdout < 0:
            raise ToolsError(f"`holdout` should be >= 0, got {self.holdout}")


@dataclass
class SidReport:
    """Quality of a Semantic ID table."""

    method: str
    source: str
    n_items: int
    level_sizes: list[int]
    codes_used: list[int]
    usage: list[float]  # used / size per level
    unique_before_collision: float  # share of items whose first L levels are unique
    max_collision_group: int
    # per level, the most items sharing one prefix of that length (code balance: the
    # share of the catalog one first code, or one code pair, must tell apart)
    largest_prefix_group: list[int] = field(default_factory=list)
    seconds: float = 0.0
    ignored_items: int = 0  # rows of a precomputed table that are not in the catalog
    extra: dict[str, Any] = field(default_factory=dict)
    # the vectors quantized (after normalizing and PCA), one row per catalog item in the
    # dataset's order; not part of the JSON report (save it with save_item_embedding)
    embedding: np.ndarray | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict view for JSON (without the embedding)."""
        out = asdict(replace(self, embedding=None))  # no deep copy of the array to drop
        del out["embedding"]
        return out


def add_collision_level(codes: np.ndarray, order_keys: list[str]) -> np.ndarray:
    """Append a level numbering items that share all codes (in ``order_keys`` order)."""
    groups: dict[tuple[int, ...], int] = {}
    col = np.zeros(len(codes), dtype=np.int64)
    for i in sorted(range(len(codes)), key=lambda j: order_keys[j]):
        key = tuple(int(c) for c in codes[i])
        col[i] = groups.get(key, 0)
        groups[key] = col[i] + 1
    return np.concatenate([codes, col[:, None]], axis=1)


def _report(
    table: SemanticIdTable,
    method: str,
    source: str,
    n_base_levels: int,
    seconds: float,
    ignored: int = 0,
) -> SidReport:
    codes = np.array([table.codes[i] for i in table.codes], dtype=np.int64)
    used = [len(np.unique(codes[:, level])) for level in range(table.n_levels)]
    rows = codes.tolist()
    # items per prefix of each length 0..n_base_levels; the longest is the collision group
    prefixes = [Counter(tuple(row[:n]) for row in rows) for n in range(n_base_levels + 1)]
    prefix = prefixes[-1]
    unique = sum(1 for row in rows if prefix[tuple(row[:n_base_levels])] == 1)
    return SidReport(
        method=method,
        source=source,
        n_items=len(table),
        level_sizes=list(table.level_sizes),
        codes_used=used,
        usage=[u / s for u, s in zip(used, table.level_sizes, strict=True)],
        unique_before_collision=unique / max(len(table), 1),
        max_collision_group=max(prefix.values(), default=0),
        largest_prefix_group=[max(c.values(), default=0) for c in prefixes[1:]],
        seconds=round(seconds, 3),
        ignored_items=ignored,
    )


def _table(
    ids: list[str],
    services: list[str],
    codes: np.ndarray,
    sizes: list[int],
    method: str,
    source: str,
) -> SemanticIdTable:
    return SemanticIdTable(
        codes={i: tuple(int(c) for c in row) for i, row in zip(ids, codes.tolist(), strict=True)},
        services={i: Service(s) for i, s in zip(ids, services, strict=True)},
        level_sizes=tuple(sizes),
        method=method,
        source=source,
    )


def _balanced(x: np.ndarray) -> np.ndarray:
    """Centre and scale to unit mean squared row norm, so each part of a hybrid weighs the same."""
    c = x.astype(np.float64) - x.mean(0)
    scale = float(np.sqrt((c**2).sum(1).mean()))
    out: np.ndarray = (c / max(scale, 1e-12)).astype(np.float32)
    return out


def resolve_embedding(ds: Dataset, cfg: SidConfig, with_text: float | None = None) -> str:
    """The embedding ``cfg`` asks for; ``auto``: text where 90% of items have some."""
    if cfg.embedding != "auto":
        return cfg.embedding
    if with_text is None:
        texts = item_texts(ds.items)
        with_text = sum(1 for t in texts if t) / max(len(texts), 1)
    return "text" if with_text >= 0.9 else "collaborative"


def build_steps(cfg: SidConfig, kind: str) -> int:
    """How many times :func:`build_semantic_ids` calls ``on_step`` for ``kind`` of embedding."""
    return (kind in ("text", "hybrid")) + (kind in ("collaborative", "hybrid")) + cfg.levels + 2


def build_semantic_ids(
    ds: Dataset,
    cfg: SidConfig | None = None,
    on_step: Callable[[str], None] | None = None,
) -> tuple[SemanticIdTable, SidReport]:
    """Embed, reduce and quantize the catalog of ``ds`` into unique Semantic IDs.

    ``on_step(name)`` reports each finished step (:func:`build_steps` of them).

    Raises:
        ToolsError: if ``embedding="text"`` is asked for items without text.
    """
    cfg = cfg or SidConfig()
    step = on_step or (lambda name: None)
    t0 = time.perf_counter()
    n_items = ds.items.num_rows
    texts = item_texts(ds.items)
    with_text = sum(1 for t in texts if t) / max(len(texts), 1)
    kind = resolve_embedding(ds, cfg, with_text)
    parts, names = [], []
    if kind in ("text", "hybrid"):
        if with_text < 0.5:
            raise ToolsError(f"only {with_text:.0%} of items have text; use collaborative")
        encoder = resolve_encoder(texts, cfg.text_encoder)
        parts.append(text_embeddings(texts, encoder=encoder))  # type: ignore[arg-type]
        names.append(f"text:{ENCODER_NAMES[encoder]}(title,brand,category)")
        step("text embeddings")
    if kind in ("collaborative", "hybrid"):
        seqs = training_sequences(ds, cfg.holdout)
        parts.append(collaborative_embeddings(seqs, n_items, seed=cfg.seed))
        names.append("collaborative:co-occurrence PPMI+SVD")
        step("co-occurrence embeddings")
    for part in parts:  # each before they are joined (quantize_embeddings checks the whole)
        check_embeddings(part, n_items)
    emb = parts[0] if len(parts) == 1 else np.concatenate([_balanced(x) for x in parts], 1)
    source = names[0] if len(names) == 1 else "hybrid:" + " + ".join(names)
    return quantize_embeddings(ds, emb, source, cfg, step, t0)


def training_sequences(ds: Dataset, holdout: int) -> list[list[int]]:
    """Each user's item rows (indices into ``ds.items``) without their last ``holdout`` events."""
    index = {item: n for n, item in enumerate(ds.items.column("item_id").to_pylist())}
    return [
        [index[i] for i in seq[: max(0, len(seq) - holdout)]] for seq in ds.sequences().values()
    ]


def quantize_embeddings(
    ds: Dataset,
    emb: np.ndarray,
    source: str,
    cfg: SidConfig | None = None,
    on_step: Callable[[str], None] | None = None,
    started: float | None = None,
) -> tuple[SemanticIdTable, SidReport]:
    """PCA, residual k-means and the collision level over ``emb`` (one row per item of ``ds``).

    ``source`` names what the embedding was made from (kept in the table);
    ``on_step`` reports PCA, each k-means level and the collision level;
    the report's seconds count from ``started`` (``time.perf_counter()``;
    default: now).

    Raises:
        ToolsError: if ``emb`` is not one finite row per item.
    """
    cfg = cfg or SidConfig()
    step = on_step or (lambda name: None)
    t0 = time.perf_counter() if started is None else started
    ids = ds.items.column("item_id").to_pylist()
    services = ds.items.column("service").to_pylist()
    check_embeddings(emb, len(ids))
    x = emb.astype(np.float64)
    if cfg.normalize:
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    x -= x.mean(0)
    dim = min(cfg.pca_dim, x.shape[1], max(len(x) - 1, 1))
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    x = x @ vt[:dim].T
    step("PCA")
    codes = ResidualKMeans(cfg.levels, cfg.codebook_size, cfg.iters, cfg.seed).fit_predict(
        x, lambda level: step(f"k-means level {level}")
    )
    codes = add_collision_level(codes, ids)
    step("collision level")
    sizes = [cfg.codebook_size] * cfg.levels + [int(codes[:, -1].max()) + 1]
    unit = " (unit-norm)" if cfg.normalize else ""
    method = f"rq-kmeans {cfg.levels}x{cfg.codebook_size}{unit} + collision level (pca {dim})"
    table = _table(ids, services, codes, sizes, method, source)
    rep = _report(table, method, source, cfg.levels, time.perf_counter() - t0)
    rep.embedding = x.astype(np.float32)
    return table, rep


def load_precomputed(path: str | Path, ds: Dataset) -> tuple[SemanticIdTable, SidReport]:
    """Take Semantic IDs from a ready table for the catalog of ``ds``.

    Accepts ``{"item_id": [c1, c2, ...]}`` (such as the Amazon Beauty RQ-VAE
    table) or a ``userlayer.sids/1`` document. Level sizes are the largest code
    per level plus one. If the given IDs are not unique, a collision level is
    appended.

    Raises:
        DataFormatError: unreadable file, bad codes, or catalog items without an ID.
    """
    t0 = time.perf_counter()
    p = Path(path)
    try:
        doc = json.loads(p.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataFormatError(f"cannot read Semantic IDs from {p}: {e}") from e
    if isinstance(doc, dict) and doc.get("format") == SIDS_FORMAT:
        doc = {k: v["codes"] for k, v in doc["items"].items()}
    if not isinstance(doc, dict) or not doc:
        raise DataFormatError(f"{p}: expected a non-empty object of item -> list of codes")
    ids = ds.items.column("item_id").to_pylist()
    services = ds.items.column("service").to_pylist()
    missing = [i for i in ids if i not in doc]
    if missing:
        raise DataFormatError(
            f"{p}: {len(missing)} catalog item(s) have no Semantic ID, e.g. {missing[:3]}"
        )
    lengths = set()
    rows = []
    for i in ids:
        c = doc[i]
        if (
            not isinstance(c, list)
            or not c
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in c)
        ):
            raise DataFormatError(
                f"{p}: item {i!r}: codes must be a list of non-negative integers, got {c!r}"
            )
        lengths.add(len(c))
        rows.append(c)
    if len(lengths) != 1:
        raise DataFormatError(f"{p}: items have different numbers of levels: {sorted(lengths)}")
    codes = np.array(rows, dtype=np.int64)
    n_levels = codes.shape[1]
    method = f"precomputed {n_levels} levels"
    if len({tuple(r) for r in rows}) < len(rows):
        codes = add_collision_level(codes, ids)
        method += " + collision level"
    sizes = [int(v) + 1 for v in codes.max(0)]
    table = _table(ids, services, codes, sizes, method, f"file:{p.name}")
    ignored = len(set(doc) - set(ids))
    return table, _report(
        table, method, f"file:{p.name}", n_levels, time.perf_counter() - t0, ignored
    )
