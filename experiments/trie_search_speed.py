"""Experiment: the tensor trie's beam search against the reference, side by side.

    python experiments/trie_search_speed.py --data synth --model p_synth --rows 512

Times both searches over the same full-history test prompts (batches of
``--batch``, beam ``--beam``, one torch thread unless ``--threads``), each
``--repeats`` times in alternation; prints the medians, their ratio and
whether both returned the same items.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from userlayer.sdk.model.decoding import beam_search
from userlayer.sdk.model.io import load_model
from userlayer.sdk.model.trie_search import TensorTrie, trie_beam_search
from userlayer.sdk.semantic_ids import SemanticIdTable
from userlayer.tools.data.format import Dataset
from userlayer.tools.train.examples import UserSequences, build_prompts, pack_prompts


def main() -> None:
    """Run the comparison of the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--beam", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    model = load_model(args.model).eval()
    table = SemanticIdTable.load(Path(args.model) / "sids.json")
    seqs = UserSequences.from_dataset(Dataset.load(args.data), table, model.cfg.geo_buckets)
    prompts = build_prompts(seqs, "test", "full")[: args.rows]
    batches = [prompts[s : s + args.batch] for s in range(0, len(prompts), args.batch)]
    t0 = time.perf_counter()
    dict_trie = table.trie()
    t_dict = time.perf_counter() - t0
    t0 = time.perf_counter()
    tensor_trie = TensorTrie(table)
    t_tensor = time.perf_counter() - t0

    def run(fn: object, trie: object) -> tuple[float, list[list[str]]]:
        out: list[list[str]] = []
        t = time.perf_counter()
        for chunk in batches:
            tok, ctx = pack_prompts(chunk)
            recs = fn(model, trie, tok, ctx, 10, args.beam, [p.service for p in chunk])  # type: ignore[operator]
            out += [[r.item_id for r in row] for row in recs]
        return time.perf_counter() - t, out

    ref_t, new_t = [], []
    same = True
    for _ in range(args.repeats):
        a, ra = run(beam_search, dict_trie)
        b, rb = run(trie_beam_search, tensor_trie)
        ref_t.append(a)
        new_t.append(b)
        same = same and ra == rb
    ref, new = statistics.median(ref_t), statistics.median(new_t)
    n = len(prompts)
    print(f"{n} rows, batch {args.batch}, beam {args.beam}, {args.threads} thread(s)")
    print(f"trie build: dict {t_dict:.2f} s, tensor {t_tensor:.2f} s")
    print(f"reference beam_search: {n / ref:.1f} rows/s (median of {args.repeats})")
    print(f"trie_beam_search:      {n / new:.1f} rows/s; ratio {ref / new:.2f}x; same items {same}")


if __name__ == "__main__":
    main()
