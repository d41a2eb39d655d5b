r"""Semantic IDs from Russian titles: which offline text encoder keeps categories together.

A research script, not part of the product. Simulates the three services'
catalog twice from one seed, with English and with Russian titles (the same
items), embeds it with each offline text encoder, builds Semantic IDs as
``userlayer sids build`` does, and prints per row:

* code usage per level and the share of items separated before the collision level;
* leaf NMI: normalized mutual information between the first-level code and the
  item's leaf category (1 = the first code is the leaf);
* kNN leaf agreement: the share of an item's 10 nearest neighbours (cosine, in
  the encoder's space) that share its leaf category.

Run::

    python experiments/russian_sids.py --users 300
    python experiments/russian_sids.py --users 300 --title-only
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from userlayer.sdk.navec import navec_embeddings
from userlayer.tools.data.synth import SynthConfig, synthesize
from userlayer.tools.sids.build import add_collision_level
from userlayer.tools.sids.embed import _minilm_embeddings, item_texts
from userlayer.tools.sids.rqkmeans import ResidualKMeans


def _knn_agreement(emb: np.ndarray, leaf: np.ndarray, k: int = 10) -> float:
    x = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    agree = 0.0
    for lo in range(0, len(x), 1024):
        sims = x[lo : lo + 1024] @ x.T
        for r in range(len(sims)):
            sims[r, lo + r] = -np.inf
        nn = np.argpartition(-sims, k, axis=1)[:, :k]
        agree += float((leaf[nn] == leaf[lo : lo + len(sims), None]).sum())
    return agree / (len(x) * k)


def _row(name: str, emb: np.ndarray, leaf: np.ndarray, ids: list[str]) -> dict[str, object]:
    x = emb.astype(np.float64) - emb.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    x = x @ vt[: min(64, x.shape[1])].T
    codes = ResidualKMeans(3, 256, 25, 0).fit_predict(x)
    full = add_collision_level(codes, ids)
    prefix: dict[tuple[int, ...], int] = {}
    for row in codes.tolist():
        prefix[tuple(row)] = prefix.get(tuple(row), 0) + 1
    separated = sum(1 for row in codes.tolist() if prefix[tuple(row)] == 1) / len(codes)
    return {
        "encoder": name,
        "codes_used": [len(np.unique(codes[:, level])) for level in range(3)],
        "separated": round(separated, 4),
        "collision_level": int(full[:, -1].max()) + 1,
        "leaf_nmi": round(float(normalized_mutual_info_score(leaf, codes[:, 0])), 4),
        "knn_leaf_agreement": round(_knn_agreement(emb, leaf), 4),
    }


def main() -> None:
    """Print one JSON row per (language, encoder)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--title-only", action="store_true", help="embed the title alone (no category path)"
    )
    args = ap.parse_args()
    rows = []
    for language in ("en", "ru"):
        res = synthesize(SynthConfig(users=args.users, seed=args.seed, language=language))
        texts = (
            res.dataset.items.column("title").to_pylist()
            if args.title_only
            else item_texts(res.dataset.items)
        )
        ids = res.dataset.items.column("item_id").to_pylist()
        leaf = np.array([c.leaf for c in res.catalog])
        encoders: dict[str, Callable[[], np.ndarray]] = {
            "minilm": lambda t=texts: _minilm_embeddings(t, 128),
        }
        if language == "ru":
            encoders["navec (OOV skipped)"] = lambda t=texts: (
                navec_embeddings(t, oov_scale=0.0).vectors
            )
            encoders["navec (OOV hashed)"] = lambda t=texts: navec_embeddings(t).vectors
        for name, encode in encoders.items():
            t0 = time.perf_counter()
            emb = encode()
            row = {"language": language, **_row(name, emb, leaf, ids)}
            row["seconds"] = round(time.perf_counter() - t0, 1)
            print(json.dumps(row, ensure_ascii=False), flush=True)
            rows.append(row)
        print(f"# {language}: {len(texts)} items, e.g. {texts[0]!r}", flush=True)


if __name__ == "__main__":
    main()
