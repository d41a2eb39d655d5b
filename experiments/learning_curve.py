"""Learning curve on a dataset: pretrain in-process, validation Recall/NDCG@10 every few epochs.

A research script, not part of the product: it trains like ``userlayer
pretrain`` (same windows, batches, AdamW and schedule shape; no checkpoints)
and ranks a fixed sample of users' validation items by constrained beam search
every ``--eval-every`` epochs. Used for the Beauty Semantic-ID comparison in
docs/model.md, e.g.::

    python experiments/learning_curve.py --data beauty --epochs 30
    python experiments/learning_curve.py --data beauty_cf --epochs 20
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from userlayer.sdk.model.config import ModelConfig
from userlayer.sdk.model.tokens import PAD
from userlayer.sdk.model.transformer import Recommender
from userlayer.sdk.semantic_ids import SemanticIdTable
from userlayer.tools.data.format import Dataset
from userlayer.tools.eval.evaluate import EvalConfig, rank_generative
from userlayer.tools.train.examples import (
    UserSequences,
    build_prompts,
    epoch_batches,
    training_windows,
)


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset directory with sids.json")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--users", type=int, default=1500, help="validation users sampled")
    ap.add_argument("--beam", type=int, default=20)
    ap.add_argument("--model", default="{}", help="ModelConfig overrides as JSON")
    return ap.parse_args()


def main() -> None:
    """Train and print one line per epoch."""
    a = _args()
    torch.set_flush_denormal(True)
    table = SemanticIdTable.load(f"{a.data}/sids.json")
    mcfg = ModelConfig(level_sizes=table.level_sizes, **json.loads(a.model))
    seqs = UserSequences.from_dataset(Dataset.load(a.data), table, mcfg.geo_buckets)
    tokens, ctx = training_windows(seqs, mcfg.max_items)
    valid = build_prompts(seqs, "valid", "full")
    pick = np.random.default_rng(0).choice(len(valid), min(a.users, len(valid)), replace=False)
    valid = [valid[i] for i in pick]
    trie = table.trie()
    torch.manual_seed(0)
    model = Recommender(mcfg)
    params = list(model.named_parameters())
    opt = torch.optim.AdamW(
        [
            {"params": [p for _, p in params if p.dim() >= 2], "weight_decay": a.weight_decay},
            {"params": [p for _, p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=a.lr,
        betas=(0.9, 0.98),
    )
    lengths = (tokens != PAD).sum(1).numpy()
    per_epoch = len(epoch_batches(lengths, a.batch, 0, 0))
    total = per_epoch * a.epochs

    def lr_at(step: int) -> float:
        if step < 50:
            return float(a.lr * (step + 1) / 50)
        p = min((step - 50) / max(1, total - 50), 1.0)
        return float(a.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p))))

    n_params = sum(p.numel() for p in model.parameters())
    print(f"{a.data}: {n_params} parameters, {len(tokens)} windows, {per_epoch} steps/epoch")
    step, t0 = 0, time.time()
    model.train()
    for ep in range(1, a.epochs + 1):
        total_loss = 0.0
        for b in epoch_batches(lengths, a.batch, 0, ep - 1):
            idx, width = torch.from_numpy(b), int(lengths[b].max())
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = model.loss(tokens[idx, -width:], ctx[idx, -width:])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            total_loss += loss.item()
        line = f"epoch {ep} loss {total_loss / per_epoch:.4f} {time.time() - t0:.0f}s"
        if ep % a.eval_every == 0 or ep == a.epochs:
            model.eval()
            m = rank_generative(model, trie, valid, EvalConfig(beam=a.beam))["all"]
            model.train()
            line += f" valid R@10 {m['R@10']:.4f} N@10 {m['N@10']:.4f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
