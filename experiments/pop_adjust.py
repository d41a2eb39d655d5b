"""Rerank the beam's final list with a popularity penalty (research script, not the product).

The generative base ranks popular targets as well as the strong SASRec and
rare ones at half its recall (``experiments/beam_limits.py``). Logit
adjustment (Menon et al., 2021) subtracts ``beta * log(count + 1)`` from each
candidate's log-probability, where ``count`` is the item's occurrences in
the training part (every user's events but the last two). This script ranks
the validation and test splits by the beam (history excluded) and prints
R@10 / N@10 for each ``beta``, so beta is chosen on validation and read on
test::

    python experiments/pop_adjust.py --data beauty_cf --model cf_nofree10 \
        --betas 0,0.05,0.1,0.2,0.3,0.5 --json pop_adjust.json
"""

from __future__ import annotations

import json
import math
import time

import torch
from _run import base_parser, load_run, training_counts

from userlayer.tools.eval.evaluate import EvalConfig, generative_lists
from userlayer.tools.eval.metrics import Accumulator
from userlayer.tools.train.examples import build_prompts


def main() -> None:
    """Rank both splits once, rerank per beta, print (and write ``--json``)."""
    ap = base_parser(__doc__)
    ap.add_argument("--betas", default="0,0.05,0.1,0.2,0.3")
    a = ap.parse_args()
    t0 = time.time()
    betas = [float(b) for b in a.betas.split(",")]
    model, table, seqs = load_run(a.data, a.model)
    count = training_counts(seqs)
    trie = table.trie()
    out: dict[str, dict[str, dict[str, float]]] = {}
    for split in ("valid", "test"):
        prompts = build_prompts(seqs, split, "full")
        if a.users:
            prompts = prompts[: a.users]
        accs = {b: Accumulator() for b in betas}
        wide = EvalConfig(k=a.beam, beam=a.beam, exclude_seen=True)
        with torch.no_grad():
            lists = generative_lists(model, trie, prompts, wide)
        for p, r in zip(prompts, lists, strict=True):
            for b in betas:
                ranked = sorted(r, key=lambda x: -(x.score - b * math.log(count[x.item_id] + 1)))
                accs[b].add([x.item_id for x in ranked][:10], p.target)
        out[split] = {
            str(b): {m: round(v, 4) for m, v in acc.result()["all"].items()}
            for b, acc in accs.items()
        }
    res = {"beam": a.beam, "results": out, "seconds": round(time.time() - t0)}
    print(json.dumps(res, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
