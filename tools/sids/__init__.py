"""Semantic IDs for the catalog: embeddings, residual k-means, import of ready tables."""

from __future__ import annotations

from userlayer.tools.sids.build import (
    SidConfig,
    SidReport,
    add_collision_level,
    build_semantic_ids,
    load_precomputed,
    quantize_embeddings,
)

__all__ = [
    "SidConfig",
    "SidReport",
    "add_collision_level",
    "build_semantic_ids",
    "load_precomputed",
    "quantize_embeddings",
]
