"""How calibrated a teacher's full softmax is: validation cross-entropy and entropy per temperature.

A SASRec trained with a sampled softmax ranks well but its logits were only
ever normalized over the target and a few hundred negatives. Distillation
(``pretrain --teacher T --distill W``) reads its softmax over every item, so
this script measures, on each user's validation item (the second to last;
history: the items before it, at most the teacher's window), the
cross-entropy of that full softmax and its mean entropy at several
temperatures, beside the uniform distribution's log(n_items).

    python experiments/teacher_calibration.py --data beauty_cf --teacher teacher_sas \
        --temperatures 0.5,1,1.5,2,3 --json teacher_calibration.json
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from userlayer.sdk.semantic_ids import SemanticIdTable
from userlayer.tools.data.format import Dataset
from userlayer.tools.eval.sasrec import item_indices, pad_left
from userlayer.tools.train.examples import UserSequences
from userlayer.tools.train.teacher import load_teacher


def main() -> None:
    """Measure each temperature on the validation items; print, and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--data", required=True)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--temperatures", default="0.5,1,1.5,2,3")
    ap.add_argument("--users", type=int, default=4000, help="first N users (0: all)")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    t = load_teacher(args.teacher)
    table = SemanticIdTable.load(f"{args.data}/sids.json")
    seqs = UserSequences.from_dataset(Dataset.load(args.data), table)
    index = item_indices(t.item_ids)
    width = t.model.cfg.max_len
    hist, target = [], []
    for items in seqs.items[: args.users or None]:
        if len(items) >= 4:
            hist.append([index[i] for i in items[:-2]][-width:])
            target.append(index[items[-2]] - 1)
    out: dict[str, object] = {
        "users": len(target),
        "items": len(t.item_ids),
        "uniform": math.log(len(t.item_ids)),
    }
    rows = {}
    with torch.no_grad():
        for temp in (float(x) for x in args.temperatures.split(",")):
            ce = ent = 0.0
            for s in range(0, len(hist), 500):
                lp = (t.model.scores(pad_left(hist[s : s + 500], width))[:, 1:] / temp).log_softmax(
                    -1
                )
                y = torch.tensor(target[s : s + 500])
                ce += float(-lp.gather(1, y[:, None]).sum())
                ent += float(-(lp.exp() * lp).sum())
            rows[str(temp)] = {"cross_entropy": ce / len(target), "entropy": ent / len(target)}
            print(
                f"T {temp}: validation cross-entropy {ce / len(target):.3f}, "
                f"entropy {ent / len(target):.3f} (uniform {out['uniform']:.3f})"
            )
    out["temperatures"] = rows
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
