r"""Semantic IDs quantized from a SASRec's item embeddings instead of co-occurrence.

A research script, not part of the product. It trains a SASRec on every
user's sequence without its last ``--holdout`` events (the validation and test
targets never shape the IDs, as for ``sids build --embedding collaborative``),
for a fixed number of epochs (no early stopping: the validation items stay
unread), takes its item embeddings (the input table, tied to the output) and
runs the same PCA, residual k-means and collision level as ``sids build``.
With ``--mix hybrid`` the SASRec table sits beside the co-occurrence
embedding (each centred and scaled to the same weight, as ``--embedding
hybrid`` does with text). It writes a new dataset directory (a copy of
``--data`` with the new ``sids.json``), so the plain ``userlayer pretrain``
/ ``eval`` commands run on it unchanged::

    python experiments/sasrec_sids.py --data beauty_cf --out beauty_sas --epochs 8
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from userlayer.tools.data.format import Dataset
from userlayer.tools.eval.sasrec import SASRecConfig, train_sasrec
from userlayer.tools.sids.build import (
    SidConfig,
    _balanced,
    quantize_embeddings,
    training_sequences,
)
from userlayer.tools.sids.embed import collaborative_embeddings


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset directory (copied)")
    ap.add_argument("--out", required=True, help="new dataset directory")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--blocks", type=int, default=1)
    ap.add_argument("--loss", default="sampled", choices=("full", "sampled"))
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--codebook", type=int, default=256)
    ap.add_argument("--holdout", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mix", default="sasrec", choices=("sasrec", "hybrid"))
    return ap.parse_args()


def main() -> None:
    """Train, embed, quantize, write."""
    a = _args()
    torch.set_flush_denormal(True)
    ds = Dataset.load(a.data)
    cfg = SASRecConfig(
        d=a.d,
        blocks=a.blocks,
        loss=a.loss,
        lr=a.lr,
        batch_size=a.batch,
        dropout=a.dropout,
        epochs=a.epochs,
        patience=0,
        seed=a.seed,
    )
    t0 = time.perf_counter()
    seqs = training_sequences(ds, a.holdout)
    n_items = ds.items.num_rows
    model = train_sasrec(
        [[i + 1 for i in s] for s in seqs if len(s) >= 2],  # SASRec's item 0 is padding
        n_items,
        cfg,
        on_epoch=lambda e, loss: print(f"epoch {e}: loss {loss:.4f}"),
    )
    emb: np.ndarray = model.item.weight.detach()[1:].numpy().astype(np.float32)
    source = f"sequential:SASRec item table ({a.epochs} epochs, d {a.d}, {a.loss} loss)"
    if a.mix == "hybrid":
        cf = collaborative_embeddings(seqs, n_items, seed=a.seed)
        emb = np.concatenate([_balanced(cf), _balanced(emb)], 1)
        source = "hybrid:collaborative:co-occurrence PPMI+SVD + " + source
    sid_cfg = SidConfig(levels=a.levels, codebook_size=a.codebook, holdout=a.holdout, seed=a.seed)
    table, rep = quantize_embeddings(ds, emb, source, sid_cfg, started=t0)
    out = Path(a.out)
    if out.exists():
        raise SystemExit(f"{out} exists")
    shutil.copytree(a.data, out)
    table.save(out / "sids.json")
    doc = {"sasrec": vars(a), "seconds": round(time.perf_counter() - t0, 1), **rep.as_dict()}
    (out / "sids_report.json").write_text(json.dumps(doc, indent=2), "utf-8")
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
