"""Experiment: the physical limit beside the serving figures.

    python experiments/flops.py --model MODEL --batch 64

Counts the floating-point operations of one engine call (prefill plus every
beam-search step, beam 20, k 10; every row its own user's adapter) on the torch
backend with ``torch.utils.flop_counter`` (matmuls and attention; elementwise
work is not counted), times the same call, and measures this machine's matmul
FLOP/s (float32, all threads) on a large square product and on the model's own
decode shape. Prints FLOPs per request, the FLOP/s the engine reaches and its
share of the matmul peak.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from userlayer.cloud.engine.engine import Engine, EngineConfig, EngineRequest
from userlayer.tools.bench.serving import _adapters, _requests


def _matmul_flops(m: int, k: int, n: int, seconds: float = 2.0) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b  # warm-up
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * m * k * n * reps / (time.perf_counter() - t0)


def main() -> None:
    """Run the measurement of the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    e = Engine(Path(args.model), EngineConfig(backend="torch", slots=args.batch))
    ads = _adapters(e, args.batch, 0)
    reqs = [
        EngineRequest(**{**r.__dict__, "slot": e.slab.load(u, ads[u])})
        for u, r in enumerate(_requests(e, args.batch, np.random.default_rng([0, args.batch])))
    ]
    with FlopCounterMode(display=False) as fc:
        e.recommend(reqs)
    flops = fc.get_total_flops()
    ts = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        e.recommend(reqs)
        ts.append(time.perf_counter() - t0)
    t = statistics.median(ts)
    cfg = e.model_cfg
    peak = _matmul_flops(2048, 2048, 2048)
    shaped = _matmul_flops(args.batch * 20, cfg.d_model, cfg.d_ff)  # a decode step's up-proj
    reached = flops / t
    print(
        f"model d_model {cfg.d_model}, {cfg.n_layers} layers, d_ff {cfg.d_ff}, levels "
        f"{cfg.level_sizes}; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"FLOPs per request (batch {args.batch}, beam 20): {flops / args.batch / 1e6:.1f} M")
    print(
        f"engine call: {t * 1000:.1f} ms, {args.batch / t:.0f} rows/s, {reached / 1e9:.2f} GFLOP/s"
    )
    print(
        f"matmul 2048^3: {peak / 1e9:.1f} GFLOP/s; decode-shaped "
        f"({args.batch * 20}x{cfg.d_model} @ {cfg.d_model}x{cfg.d_ff}): {shaped / 1e9:.1f} GFLOP/s"
    )
    print(
        f"share of the matmul peak: {reached / peak:.1%}; of the decode-shaped: "
        f"{reached / shaped:.1%}"
    )


if __name__ == "__main__":
    main()
