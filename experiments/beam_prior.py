r"""Popularity adjustment inside the beam, level by level (research script, not the product).

Most targets the strong SASRec finds and the beam misses are pruned before
the last level, 319 of 638 at the first code (``experiments/beam_limits.py``),
and they are rare items. Adjusting the final list (``pop_adjust.py``) cannot
bring them back. Here every level's code logits are adjusted before the
search prunes (logit adjustment, Menon et al., 2021)::

    logit(c | prefix) - beta * log(n(prefix + c) + 1)

where ``n(prefix + c)`` counts the training part's events (every user's
events but the last two) whose item starts with that prefix. An item's
final score is thus lowered by ``beta`` times the sum, over its levels, of
its prefixes' log counts (each level renormalised): a popular prefix is
penalised at every level below it, unlike ``pop_adjust.py``'s single
``log(n(item) + 1)``. Prints R@10 / N@10 and R@20 (the final list's
recall) per beta on both splits; beta is chosen on validation::

    python experiments/beam_prior.py --data beauty_cf --model cf_nofree10 \
        --betas 0,0.1,0.2,0.3,0.5 --json beam_prior.json
"""

from __future__ import annotations

import json
import time
from collections import Counter

import torch
from _run import base_parser, load_run, training_counts
from torch import Tensor

from userlayer.sdk.model.decoding import TorchDecoder
from userlayer.sdk.model.tokens import FIRST_CODE, level_offsets
from userlayer.sdk.model.trie_search import TensorTrie, trie_beam_search
from userlayer.sdk.semantic_ids import SemanticIdTable
from userlayer.tools.eval.metrics import Accumulator
from userlayer.tools.train.examples import build_prompts, pack_prompts


class PriorDecoder:
    """A :class:`TorchDecoder` whose code logits are popularity-adjusted per prefix."""

    def __init__(
        self,
        inner: TorchDecoder,
        log_n: dict[tuple[int, ...], Tensor],
        beta: float,
        offsets: list[int],
    ) -> None:
        self.inner, self.log_n, self.beta, self.offsets = inner, log_n, beta, offsets
        self.prefixes: list[tuple[int, ...]] = []  # each beam row's codes so far

    def _bias(self, size: int) -> Tensor:
        zero = torch.zeros(size)
        return torch.stack([self.log_n.get(p, zero) for p in self.prefixes]) * -self.beta

    def prefill(self, tokens: Tensor, ctx: Tensor) -> Tensor:
        """The inner prefill; the first level's codes adjusted (its slice of the logits)."""
        out = self.inner.prefill(tokens, ctx)
        self.prefixes = [()] * tokens.shape[0]
        first = self.log_n[()]
        out = out.clone()
        out[:, : first.shape[0]] += self._bias(first.shape[0])
        return out

    def step(self, origin: Tensor, codes: Tensor, level: int) -> Tensor:
        """The inner step; the level's codes adjusted under each row's prefix."""
        out = self.inner.step(origin, codes, level)
        code = (codes[:, 0] - FIRST_CODE - self.offsets[level - 1]).tolist()
        self.prefixes = [(*self.prefixes[o], c) for o, c in zip(origin.tolist(), code, strict=True)]
        return out + self._bias(out.shape[1])

    def items(self) -> Tensor | None:
        """The inner dense scores."""
        return self.inner.items()


def prefix_counts(table: SemanticIdTable, counts: Counter[str]) -> dict[tuple[int, ...], Tensor]:
    """``log(n + 1)`` per code under each prefix (one vector per prefix, its level's size)."""
    sizes = table.level_sizes
    out: dict[tuple[int, ...], Tensor] = {}
    for item, codes in table.codes.items():
        n = counts.get(item, 0)
        for lvl in range(len(sizes)):
            p = tuple(codes[:lvl])
            vec = out.setdefault(p, torch.zeros(sizes[lvl]))
            vec[codes[lvl]] += n
    return {p: v.add(1).log() for p, v in out.items()}


def main() -> None:
    """Rank both splits per beta, print (and write ``--json``)."""
    ap = base_parser(__doc__)
    ap.add_argument("--betas", default="0,0.1,0.2,0.3,0.5")
    a = ap.parse_args()
    t0 = time.time()
    betas = [float(b) for b in a.betas.split(",")]
    model, table, seqs = load_run(a.data, a.model)
    counts = training_counts(seqs)
    log_n = prefix_counts(table, counts)
    offsets = level_offsets(table.level_sizes)
    trie = TensorTrie(table)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for split in ("valid", "test"):
        prompts = build_prompts(seqs, split, "full")
        if a.users:
            prompts = prompts[: a.users]
        out[split] = {}
        for beta in betas:
            acc = Accumulator((5, 10, a.beam))
            for s in range(0, len(prompts), 256):
                chunk = prompts[s : s + 256]
                tok, ctx = pack_prompts(chunk)
                dec = PriorDecoder(TorchDecoder(model), log_n, beta, offsets)
                with torch.no_grad():
                    recs = trie_beam_search(
                        dec,  # type: ignore[arg-type]
                        trie,
                        tok,
                        ctx,
                        a.beam,
                        a.beam,
                        [p.service for p in chunk],
                        [p.history for p in chunk],
                    )
                for p, r in zip(chunk, recs, strict=True):
                    acc.add([x.item_id for x in r], p.target)
            res = acc.result()["all"]
            out[split][str(beta)] = {m: round(v, 4) for m, v in res.items()}
            print(split, beta, out[split][str(beta)], round(time.time() - t0), flush=True)
    best = max(out["valid"], key=lambda b: (out["valid"][b]["N@10"], out["valid"][b]["R@10"]))
    res_all = {
        "beam": a.beam,
        "chosen on valid": {"beta": best, "test": out["test"][best]},
        "results": out,
        "seconds": round(time.time() - t0),
        "note": f"R@{a.beam} is the final list's recall (k = beam)",
    }
    print(json.dumps(res_all, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res_all, f, indent=2)


if __name__ == "__main__":
    main()
