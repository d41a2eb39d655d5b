r"""Reranking the beam's candidates by beam log-probability plus the dense head's.

A research script, not part of the product. For a base with a dense item head
(``--item-head``) it runs one constrained beam search of width ``--beam`` per
prompt and ranks those candidates by ``beam_logp + alpha * head_logp`` for
each ``--alphas`` value: 0 is the beam's own order, ``inf`` the head's alone
(the engine's ``beam+dense``). Both scores are log-probabilities of the same
item, so alpha 1 is their product (a product of experts). The same prompts and
candidates serve every alpha, so the rows compare like with like::

    python experiments/fused_rerank.py --data beauty_cf --model cf_nofree10 \
        --split valid --users 5000 --exclude-seen
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from userlayer.sdk.model.decoding import TorchDecoder
from userlayer.sdk.model.dense_search import head_order
from userlayer.sdk.model.io import load_model
from userlayer.sdk.model.trie_search import TensorTrie, trie_beam_search
from userlayer.sdk.semantic_ids import SemanticIdTable
from userlayer.tools.data.format import Dataset
from userlayer.tools.eval.metrics import Accumulator
from userlayer.tools.train.examples import UserSequences, build_prompts, pack_prompts


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset directory")
    ap.add_argument("--model", required=True, help="model directory (a base with --item-head)")
    ap.add_argument("--split", default="valid", choices=("valid", "test"))
    ap.add_argument("--users", type=int, default=0, help="a random sample of users (0: all)")
    ap.add_argument("--beam", type=int, default=20)
    ap.add_argument("--alphas", default="0,0.25,0.5,1,2,4,inf")
    ap.add_argument("--exclude-seen", action="store_true")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args()


def main() -> None:
    """Print each alpha's R@10 and N@10, then every figure as one JSON line."""
    a = _args()
    torch.set_flush_denormal(True)
    model = load_model(a.model).eval()
    table = SemanticIdTable.load(f"{a.model}/sids.json")
    seqs = UserSequences.from_dataset(Dataset.load(a.data), table, model.cfg.geo_buckets)
    prompts = build_prompts(seqs, a.split, "full", max_history=min(20, model.cfg.max_items - 1))
    if a.users:
        pick = np.random.default_rng(a.seed).permutation(len(prompts))[: a.users]
        prompts = [prompts[i] for i in sorted(pick)]
    alphas = [float(x) for x in a.alphas.split(",")]
    trie = TensorTrie(table)
    order = head_order(model, trie)
    accs = {x: Accumulator() for x in alphas}
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(prompts), a.batch_size):
            chunk = prompts[s : s + a.batch_size]
            tok, ctx = pack_prompts(chunk)
            dec = TorchDecoder(model)
            beams = trie_beam_search(
                dec,
                trie,
                tok,
                ctx,
                a.beam,
                a.beam,
                [p.service for p in chunk],
                [p.history for p in chunk] if a.exclude_seen else None,
            )
            scores = dec.items()
            assert scores is not None
            head = scores[:, order].float().log_softmax(-1)
            for r, (p, recs) in enumerate(zip(chunk, beams, strict=True)):
                ids = [x.item_id for x in recs]
                beam_lp = torch.tensor([x.score for x in recs])
                head_lp = head[r, [trie.index[i] for i in ids]]
                for x in alphas:
                    fused = head_lp if math.isinf(x) else beam_lp + x * head_lp
                    ranked = [ids[j] for j in fused.argsort(descending=True, stable=True)]
                    accs[x].add(ranked, p.target, str(p.service))
    out = {
        "split": a.split,
        "users": len(prompts),
        "beam": a.beam,
        "exclude_seen": a.exclude_seen,
        "seconds": round(time.perf_counter() - t0, 1),
        "alphas": {str(x): accs[x].result()["all"] for x in alphas},
    }
    for x, m in out["alphas"].items():
        print(f"alpha {x:>5}: R@10 {m['R@10']:.4f}  N@10 {m['N@10']:.4f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
