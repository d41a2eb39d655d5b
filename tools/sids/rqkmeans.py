"""Residual k-means: quantize vectors into L levels of K codes each.

Level 1 clusters the vectors, level 2 clusters what level 1's centroids leave
(the residuals), and so on; an item's code tuple is the cluster index at each
level. This is the RQ-KMeans used for Semantic IDs by OneRec and others (an
alternative to TIGER's RQ-VAE that needs no training loop).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["ResidualKMeans", "kmeans"]


def _sq_dists(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    # (n, k) squared distances; clamped because of rounding
    d = (x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
    out: np.ndarray = np.maximum(d, 0.0)
    return out


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    n = len(x)
    centers = np.empty((k, x.shape[1]), dtype=x.dtype)
    centers[0] = x[rng.integers(n)]
    closest = _sq_dists(x, centers[:1])[:, 0]
    for j in range(1, k):
        total = closest.sum()
        idx = rng.integers(n) if total <= 0 else rng.choice(n, p=closest / total)
        centers[j] = x[idx]
        closest = np.minimum(closest, _sq_dists(x, centers[j : j + 1])[:, 0])
    return centers


def kmeans(
    x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 25
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding; empty clusters are reseeded.

    Returns:
        (centroids (k, d), assignment (n,)).
    """
    k = min(k, len(x))
    centers = _kmeans_pp(x, k, rng)
    assign = np.zeros(len(x), dtype=np.int64)
    for it in range(iters):
        d = _sq_dists(x, centers)
        new = d.argmin(1)
        if it and np.array_equal(new, assign):
            break
        assign = new
        counts = np.bincount(assign, minlength=k)
        sums = np.zeros_like(centers)
        np.add.at(sums, assign, x)
        nonempty = counts > 0
        centers[nonempty] = sums[nonempty] / counts[nonempty, None]
        empty = np.flatnonzero(~nonempty)
        if len(empty):
            # reseed on the points farthest from their centroid
            far = np.argsort(-d[np.arange(len(x)), assign])[: len(empty)]
            centers[empty] = x[far]
    return centers, assign


@dataclass
class ResidualKMeans:
    """L levels of K-way k-means on successive residuals."""

    levels: int = 3
    codebook_size: int = 256
    iters: int = 25
    seed: int = 0

    def fit_predict(
        self, x: np.ndarray, on_level: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """Quantize ``x`` (n, d); returns codes (n, levels) int64.

        ``on_level(level)`` is called as each level (1-based) is done.
        """
        rng = np.random.default_rng(self.seed)
        residual = x.astype(np.float64, copy=True)
        codes = np.zeros((len(x), self.levels), dtype=np.int64)
        for level in range(self.levels):
            centers, assign = kmeans(residual, self.codebook_size, rng, self.iters)
            codes[:, level] = assign
            residual -= centers[assign]
            if on_level is not None:
                on_level(level + 1)
        return codes
