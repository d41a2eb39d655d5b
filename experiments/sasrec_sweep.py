r"""SASRec recipe sweep: validation NDCG@10 per epoch for a few training recipes, one run.

A research script, not part of the product. It reads a ``{"user": [items...]}``
JSON in time order (Beauty's ``inter.json``), holds out each user's last item
(test, never read here) and validates on the second to last, exactly as
``userlayer eval --baselines sasrec`` does before its refit. Each variant is a
set of :class:`SASRecConfig` overrides; all share users, split and validation
sample. Example::

    python experiments/sasrec_sweep.py ../shared/data/amazon-beauty/inter.json \
        --variant dropout=0.5 --variant dropout=0.2,length_grouped=0 --out sweep.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields, replace
from typing import Any

import torch

from userlayer.tools.eval.sasrec import SASRecConfig, train_sasrec


def _variant(text: str) -> dict[str, Any]:
    types = {f.name: f.type for f in fields(SASRecConfig)}
    out: dict[str, Any] = {}
    for part in filter(None, text.split(",")):
        key, value = part.split("=")
        kind = types[key]
        out[key] = (
            bool(int(value))
            if kind == "bool"
            else (float(value) if kind == "float" else (value if kind == "str" else int(value)))
        )
    return out


def main() -> None:
    """Train each variant on the same split and print its validation curve."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inter", help='JSON {"user": [item, ...]} in time order')
    ap.add_argument("--variant", action="append", default=[], help="k=v,k=v overrides")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    with open(args.inter) as f:
        raw: dict[str, list[Any]] = json.load(f)
    items = sorted({i for s in raw.values() for i in s})
    index = {i: n + 1 for n, i in enumerate(items)}
    train, val_h, val_t = [], [], []
    for s in raw.values():
        ids = [index[i] for i in s[:-2]]  # without the test and the validation item
        val_item = index[s[-2]] if len(s) >= 3 else None
        train.append(ids)
        if val_item is not None and ids:
            val_h.append(ids)
            val_t.append(val_item)
    results = {}
    for text in args.variant or [""]:
        cfg = replace(SASRecConfig(epochs=args.epochs), **_variant(text))
        curve: list[tuple[int, float]] = []
        t0 = time.perf_counter()
        model = train_sasrec(
            train,
            len(items),
            cfg,
            None,
            (val_h, val_t),
            lambda ep, n, c=curve, name=text: (
                c.append((ep, n)),
                print(f"[{name}] epoch {ep}: val NDCG@10 {n:.4f}", flush=True),
            ),
        )
        best = max(n for _, n in curve)
        results[text or "default"] = {
            "best_epoch": model.best_epoch,
            "best_val_ndcg10": best,
            "curve": curve,
            "seconds": time.perf_counter() - t0,
        }
        print(f"[{text}] best {best:.4f} at epoch {model.best_epoch}", flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
