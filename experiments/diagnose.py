"""Fit diagnostics of a pretrained base on a dataset (research script, not the product).

Prints the mean code loss of each sampled user's last training item and of
their validation item (close: the model underfits; far apart: it memorises),
then validation Recall/NDCG@5/10 by constrained beam search at the given
width. Used for docs/model.md::

    python experiments/diagnose.py --data beauty --model m_beauty_cf --beam 50
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from userlayer.sdk.model.io import load_model
from userlayer.sdk.semantic_ids import SemanticIdTable
from userlayer.tools.data.format import Dataset
from userlayer.tools.eval.evaluate import EvalConfig, rank_generative
from userlayer.tools.train.examples import UserSequences, build_prompts, pack_scored
from userlayer.tools.train.pretrain import validation_loss


def _subset(seqs: UserSequences, pick: np.ndarray, cut: int) -> UserSequences:
    """The picked users, each without their last ``cut`` events."""
    out = copy.copy(seqs)
    out.users = [seqs.users[i] for i in pick]
    for name in ("items", "tokens", "ctx", "times", "services"):
        v = getattr(seqs, name)
        setattr(out, name, [v[i][: len(v[i]) - cut] for i in pick])
    return out


def main() -> None:
    """Print the two losses and the validation ranking metrics."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--beam", type=int, default=20)
    a = ap.parse_args()
    torch.set_flush_denormal(True)
    t0 = time.time()
    model = load_model(a.model).eval()
    table = SemanticIdTable.load(f"{a.model}/sids.json")
    seqs = UserSequences.from_dataset(Dataset.load(a.data), table, model.cfg.geo_buckets)
    n = min(a.users, len(seqs.users))
    pick = np.random.default_rng(0).choice(len(seqs.users), size=n, replace=False)
    train_last = build_prompts(_subset(seqs, pick, 2), "test", "full")  # last training item
    valid = build_prompts(_subset(seqs, pick, 0), "valid", "full")
    train_loss = validation_loss(model, pack_scored(train_last, table))
    print(f"loss: last training item {train_loss:.4f}", end=", ")
    print(f"validation item {validation_loss(model, pack_scored(valid, table)):.4f}")
    m = rank_generative(model, table.trie(), valid, EvalConfig(beam=a.beam))["all"]
    print(f"validation, beam {a.beam}: { {k: round(v, 4) for k, v in m.items()} }")
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
