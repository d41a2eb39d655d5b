r"""Where ``userlayer eval``'s system time goes: SASRec's full-softmax steps on a big catalog.

A research script, not part of the product. Runs ``--steps`` training steps of
the SASRec baseline (full-softmax cross-entropy over ``--items`` items, batches
of ``--batch`` windows of ``--len`` positions, as ``userlayer eval`` trains it)
on random data and prints user and system CPU seconds (``getrusage``) and the
page faults, then the same after :func:`userlayer.tools.alloc.keep_freed_memory`
when ``--keep`` is given. Run each setting in its own process::

    python experiments/alloc_churn.py --items 14000
    python experiments/alloc_churn.py --items 14000 --keep
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from userlayer.tools.eval.sasrec import SASRec, SASRecConfig


def main() -> None:
    """Time the steps and print CPU seconds split into user and system."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=14_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--len", type=int, default=50)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--keep", action="store_true", help="keep freed memory (mallopt)")
    args = ap.parse_args()
    if args.keep:
        from userlayer.tools.alloc import keep_freed_memory

        keep_freed_memory()
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    model = SASRec(args.items, SASRecConfig(max_len=args.len))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randint(1, args.items + 1, (args.batch, args.len))
    y = torch.randint(1, args.items + 1, (args.batch, args.len))
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(args.steps):
        logits = model(x).reshape(-1, 64) @ model.item.weight.T
        loss = torch.nn.functional.cross_entropy(logits, y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
    print(
        f"items {args.items} keep={args.keep}: {args.steps} steps, wall {wall:.1f} s, "
        f"user {r1.ru_utime - r0.ru_utime:.1f} s, sys {r1.ru_stime - r0.ru_stime:.1f} s, "
        f"minor page faults {r1.ru_minflt - r0.ru_minflt:,}"
    )


if __name__ == "__main__":
    main()
