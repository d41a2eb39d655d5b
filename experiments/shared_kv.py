"""Experiment: beams sharing their request's prompt cache, against copying it per beam.

    python experiments/shared_kv.py --model MODEL --batches 1,8,32,64 --repeats 7

On the torch engine (every row its own user's adapter, beam 20, k 10, the
serving bench's requests), side by side in one run and interleaved:

- ``python search, gathered``: the reference ``beam_search`` (a Python loop over
  beams and a dict trie) with the prompt's keys and values copied to every beam
  at each step (the decoder before the group view): the engine as it was when
  the serving issue was filed;
- ``tensor search, gathered``: the trie as tensors, the same copying decoder;
- ``tensor search, shared``: the trie as tensors and the beams reading their
  request's prompt cache through a group view (the engine now).

Prints rows/s (median of ``--repeats`` calls), the ratios, and whether the three
returned the same items.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from userlayer.cloud.engine.engine import Engine, EngineConfig, EngineRequest
from userlayer.sdk.model import KVCache, Recommender, RowAdapters
from userlayer.sdk.model.decoding import Decoder, TorchDecoder, beam_search, level_codes
from userlayer.sdk.model.prompt import encode_request, mode_one_hot, pack_prompts
from userlayer.sdk.model.trie_search import trie_beam_search
from userlayer.sdk.schemas import Service
from userlayer.tools.bench.serving import _adapters, _requests


class GatheredDecoder:
    """The decoder before the group view: the whole cache gathered to every beam per step."""

    def __init__(self, model: Recommender, adapters: RowAdapters | None) -> None:
        self.model, self.adapters = model, adapters
        self.cache: KVCache | None = None

    def prefill(self, tokens: Tensor, ctx: Tensor) -> Tensor:
        """Run the prompts; keep their cache."""
        logits, self.cache = self.model(tokens, ctx, self.adapters, return_cache=True)
        return logits[:, -1]  # every code: the search takes level 0's

    def step(self, origin: Tensor, codes: Tensor, level: int) -> Tensor:
        """Gather the whole cache to the new rows, then run one position."""
        assert self.cache is not None
        ctx = torch.zeros(codes.shape[0], 1, 7, dtype=torch.long)
        logits, self.cache = self.model(
            codes, ctx, self.adapters, self.cache.select(origin), return_cache=True
        )
        return logits[:, -1, level_codes(self.model.cfg.level_sizes, level)]


def _search(
    search: str,
    e: Engine,
    dec_cls: Callable[[Recommender, RowAdapters], Decoder],
    model: Recommender,
    rows: RowAdapters,
    tok: Tensor,
    ctx: Tensor,
    services: list[Service],
) -> list[list[str]]:
    dec = dec_cls(model, rows)
    if search == "python":
        out = beam_search(dec, e.trie, tok, ctx, 10, 20, services)
    else:
        out = trie_beam_search(dec, e.tensor_trie, tok, ctx, 10, 20, services)
    return [[x.item_id for x in row] for row in out]


def main() -> None:
    """Run the comparison of the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    e = Engine(Path(args.model), EngineConfig(backend="torch", slots=64))
    model = e.backend.model  # type: ignore[attr-defined]
    ads = _adapters(e, 64, 0)
    print(f"model {args.model}: torch {torch.__version__}, {torch.get_num_threads()} threads")
    for b in (int(x) for x in args.batches.split(",")):
        reqs = [
            EngineRequest(**{**r.__dict__, "slot": e.slab.load(u, ads[u])})
            for u, r in enumerate(_requests(e, b, np.random.default_rng([0, b])))
        ]
        prompts = [
            encode_request(r.service, r.context, r.session, e.table, e.vocab, e.max_items)
            for r in reqs
        ]
        tok, ctx = pack_prompts([(p.tokens, p.ctx) for p in prompts], 7)
        active, tensors = e.slab.gather(np.array([r.slot for r in reqs]))
        mw = np.array([mode_one_hot(r.context.mode, e.acfg.n_modes) for r in reqs], np.float32)
        rows = RowAdapters(
            e.acfg,
            torch.from_numpy(active),
            {k: torch.from_numpy(v) for k, v in tensors.items()},
            torch.from_numpy(mw),
        )
        services = [r.service for r in reqs]
        runs: dict[str, Callable[[], list[list[str]]]] = {
            "python search, gathered": partial(
                _search, "python", e, GatheredDecoder, model, rows, tok, ctx, services
            ),
            "tensor search, gathered": partial(
                _search, "tensor", e, GatheredDecoder, model, rows, tok, ctx, services
            ),
            "tensor search, shared": partial(
                _search, "tensor", e, TorchDecoder, model, rows, tok, ctx, services
            ),
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        items: dict[str, list[list[str]]] = {}
        with torch.no_grad():
            for k, fn in runs.items():
                items[k] = fn()  # warm-up
            for _ in range(args.repeats):
                for k, fn in runs.items():
                    t = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        same = len({str(v) for v in items.values()}) == 1
        base = med["python search, gathered"]
        print(f"batch {b}: same items {same}")
        for k, t in med.items():
            print(f"  {k:26s} {b / t:8.1f} rows/s  {base / t:5.2f}x")


if __name__ == "__main__":
    main()
