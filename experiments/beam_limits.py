r"""Where the generative base loses to SASRec (research script, not the product).

Ranks every user of a split by the base's constrained beam (the final beam's
items, best first, history excluded as eSASRec's protocol does) and by the
SASRec trained in the same run (its defaults are the paper's small one; the
strong one needs the flags below), and prints:

- R@10 and R@k for k = the beam width of both (the beam's R@k is its recall
  ceiling: a reranker of the final beam can reach no more), and SASRec's
  R@50;
- the 2x2 table of hits@10 and their union;
- for each target SASRec ranks in its top 10 and the beam does not: whether it
  is in the final beam below rank 10, or was pruned, and at which level (the
  deepest Semantic ID level at which some item of the final beam shares the
  target's prefix; a proxy for where the search dropped it);
- R@10 of both by how often the target occurs in the training part.

Used for docs/model.md::

    python experiments/beam_limits.py --data beauty_cf --model cf_nofree10 \
        --sasrec-d 256 --sasrec-blocks 1 --sasrec-lr 5e-4 --sasrec-loss sampled \
        --sasrec-batch 128 --sasrec-val-users 22363 --json beam_limits.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter

import torch

from userlayer.sdk.model.io import load_model
from userlayer.sdk.semantic_ids import SemanticIdTable
from userlayer.tools.data.format import Dataset
from userlayer.tools.eval.evaluate import EvalConfig, generative_lists, sasrec_rankings
from userlayer.tools.eval.sasrec import SASRecConfig
from userlayer.tools.train.examples import UserSequences, build_prompts

BUCKETS = ((0, 0), (1, 4), (5, 19), (20, 99), (100, 10**9))


def _shared_level(codes: dict[str, tuple[int, ...]], target: str, ranked: list[str]) -> int:
    """Deepest level (0: none) at which an item of ``ranked`` shares the target's prefix."""
    t = codes[target]
    best = 0
    for item in ranked:
        c = codes[item]
        n = 0
        while n < len(t) and c[n] == t[n]:
            n += 1
        best = max(best, n)
    return best


def main() -> None:
    """Rank, compare, print (and write ``--json``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--split", default="test", choices=("valid", "test"))
    ap.add_argument("--beam", type=int, default=20)
    ap.add_argument("--users", type=int, default=0, help="first N users (0: all)")
    ap.add_argument("--sasrec-d", type=int, default=64)
    ap.add_argument("--sasrec-blocks", type=int, default=2)
    ap.add_argument("--sasrec-lr", type=float, default=1e-3)
    ap.add_argument("--sasrec-loss", default="full")
    ap.add_argument("--sasrec-batch", type=int, default=256)
    ap.add_argument("--sasrec-val-users", type=int, default=5000)
    ap.add_argument("--sasrec-seed", type=int, default=0)
    ap.add_argument("--sasrec-epochs", type=int, default=200)
    ap.add_argument("--no-sasrec", action="store_true", help="the beam's rows only")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_flush_denormal(True)
    t0 = time.time()
    model = load_model(a.model).eval()
    table = SemanticIdTable.load(f"{a.model}/sids.json")
    seqs = UserSequences.from_dataset(Dataset.load(a.data), table, model.cfg.geo_buckets)
    prompts = build_prompts(seqs, a.split, "full")
    if a.users:
        prompts = prompts[: a.users]
    wide = EvalConfig(k=a.beam, beam=a.beam, exclude_seen=True)
    with torch.no_grad():
        lists = generative_lists(model, table.trie(), prompts, wide)
    beam = [[x.item_id for x in r] for r in lists]
    logging.info("beam %d: %d users in %.0f s", a.beam, len(prompts), time.time() - t0)
    cfg = EvalConfig(
        split=a.split,
        exclude_seen=True,
        sasrec=SASRecConfig(
            d=a.sasrec_d,
            blocks=a.sasrec_blocks,
            lr=a.sasrec_lr,
            loss=a.sasrec_loss,
            batch_size=a.sasrec_batch,
            val_users=a.sasrec_val_users,
            seed=a.sasrec_seed,
            epochs=a.sasrec_epochs,
        ),
    )
    if a.no_sasrec:  # every SASRec row reads as no hit
        sas: list[list[str]] = [[] for _ in prompts]
    else:
        sas = sasrec_rankings(seqs, table, {"full": prompts}, cfg, k=max(50, a.beam))["full"]
    # how often each target occurs in the training part (all but the split's last events)
    back = 1 if a.split == "test" else 2
    freq = Counter(i for items in seqs.items for i in items[: len(items) - back - 1])
    codes = table.codes
    n = len(prompts)

    def rate(hits: list[bool]) -> float:
        return round(sum(hits) / max(1, len(hits)), 4)

    g10 = [p.target in r[:10] for p, r in zip(prompts, beam, strict=True)]
    gk = [p.target in r for p, r in zip(prompts, beam, strict=True)]
    s10 = [p.target in r[:10] for p, r in zip(prompts, sas, strict=True)]
    sk = [p.target in r[: a.beam] for p, r in zip(prompts, sas, strict=True)]
    s50 = [p.target in r[:50] for p, r in zip(prompts, sas, strict=True)]
    lost = Counter()
    for p, r, g, s in zip(prompts, beam, g10, s10, strict=True):
        if s and not g:
            lost[
                "in beam, below 10"
                if p.target in r
                else f"pruned, shares {_shared_level(codes, p.target, r)} levels"
            ] += 1
    by_freq = {}
    for lo, hi in BUCKETS:
        idx = [i for i, p in enumerate(prompts) if lo <= freq[p.target] <= hi]
        by_freq[f"{lo}-{hi if hi < 10**9 else 'more'}"] = {
            "users": len(idx),
            "beam R@10": rate([g10[i] for i in idx]),
            "SASRec R@10": rate([s10[i] for i in idx]),
        }
    res = {
        "users": n,
        "beam": a.beam,
        "beam R@10": rate(g10),
        f"beam R@{a.beam} (its ceiling)": rate(gk),
        "SASRec R@10": rate(s10),
        f"SASRec R@{a.beam}": rate(sk),
        "SASRec R@50": rate(s50),
        "hits@10": {
            "both": sum(g and s for g, s in zip(g10, s10, strict=True)),
            "beam only": sum(g and not s for g, s in zip(g10, s10, strict=True)),
            "SASRec only": sum(s and not g for g, s in zip(g10, s10, strict=True)),
            "neither": sum(not g and not s for g, s in zip(g10, s10, strict=True)),
            "union R@10 (an oracle of the two)": rate(
                [g or s for g, s in zip(g10, s10, strict=True)]
            ),
        },
        "SASRec's top-10 targets the beam misses": dict(sorted(lost.items())),
        "R@10 by the target's training count": by_freq,
        "seconds": round(time.time() - t0),
    }
    if a.no_sasrec:  # no SASRec row was ranked: leave out what would compare with it
        res = {k: v for k, v in res.items() if "SASRec" not in k and k != "hits@10"}
        for row in res["R@10 by the target's training count"].values():
            del row["SASRec R@10"]
    print(json.dumps(res, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
