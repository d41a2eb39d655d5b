"""Ranking with the base's dense item head, alone and reranking the beam's candidates.

A base pretrained with ``--item-head`` scores every catalog item from the
hidden state where the next item's first code is predicted
(:meth:`Recommender.item_logits`). Two rankings use it, as LIGER combines
generative retrieval with dense scoring:

* ``dense``: every item of the request's service by its dense score;
* ``beam+dense``: the beam's candidates (``beam`` of them) reranked by the
  dense score. (Adding the dense head's own top items to the candidates, as
  LIGER does for cold-start items, would make this the ``dense`` ranking
  whenever every item has a dense score: the dense top-k always wins.)

Both honour the protocol's service restriction and, with ``exclude_seen``, the
history exclusion; per-row adapters apply as in the beam search.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from userlayer.sdk.model.decoding import beam_search
from userlayer.sdk.model.transformer import Recommender, RowAdapters
from userlayer.sdk.semantic_ids import SemanticIdTable, SidTrie
from userlayer.tools.eval.metrics import Accumulator
from userlayer.tools.exceptions import ToolsError
from userlayer.tools.train.examples import Prompt, pack_prompts

__all__ = ["DENSE_MODES", "head_items", "rank_dense"]

DENSE_MODES = ("dense", "beam+dense")


def head_items(model: Recommender, table: SemanticIdTable) -> list[str]:
    """Item ids in the head's order (Semantic ID order).

    Raises:
        ToolsError: if the model has no head or was trained on another table.
    """
    if not model.cfg.n_items:
        raise ToolsError("the model has no dense item head (pretrain with --item-head)")
    items = list(table.codes)
    codes = torch.tensor([table.codes[i] for i in items], dtype=torch.long)
    idx = model.item_index(codes.to(model.item_keys.device)).cpu()
    if len(items) != model.cfg.n_items or bool((idx < 0).any()):
        raise ToolsError("the dense item head was trained on another Semantic ID table")
    ids = [""] * len(items)
    for item, j in zip(items, idx.tolist(), strict=True):
        ids[j] = item  # Semantic IDs are unique: one item per head index
    return ids


def rank_dense(
    model: Recommender,
    table: SemanticIdTable,
    trie: SidTrie,
    prompts: list[Prompt],
    mode: str,
    k: int = 10,
    beam: int = 20,
    batch_size: int = 256,
    exclude_seen: bool = False,
    tick: Callable[[int], None] | None = None,
    adapters: RowAdapters | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of the dense head's top-k (``mode``: see the module docstring) per group."""
    if mode not in DENSE_MODES:
        raise ToolsError(f"the dense ranking should be one of {DENSE_MODES}, got {mode!r}")
    ids = head_items(model, table)
    pos = {i: n for n, i in enumerate(ids)}
    services = sorted({s.value for s in table.services.values()})
    in_service = {
        s: torch.tensor([table.services[i].value == s for i in ids], dtype=torch.bool)
        for s in services
    }
    acc = Accumulator()
    model.eval()
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s : s + batch_size]
        tok, ctx = pack_prompts(chunk)
        rows = None if adapters is None else adapters.select(torch.arange(s, s + len(chunk)))
        with torch.no_grad():
            scores = model.item_logits(tok, ctx, rows).float()
        for r, p in enumerate(chunk):
            allowed = in_service.get(str(p.service), torch.zeros(len(ids), dtype=torch.bool))
            scores[r].masked_fill_(~allowed, float("-inf"))
            if exclude_seen:
                seen = [pos[i] for i in p.history if i in pos]
                scores[r, seen] = float("-inf")
        if mode == "dense":
            top = scores.topk(min(k, len(ids)), dim=1).indices.tolist()
            ranked = [[ids[j] for j in row] for row in top]
        else:
            recs = beam_search(
                model,
                trie,
                tok,
                ctx,
                k=beam,
                beam=beam,
                services=[p.service for p in chunk],
                exclude=[p.history for p in chunk] if exclude_seen else None,
                adapters=rows,
            )
            ranked = []
            for r, rec in enumerate(recs):
                cand = {pos[x.item_id] for x in rec if x.item_id in pos}
                cand = {j for j in cand if scores[r, j] > float("-inf")}
                row = scores[r]
                order = sorted(cand, key=lambda j: -float(row[j]))
                ranked.append([ids[j] for j in order[:k]])
        for p, rk in zip(chunk, ranked, strict=True):
            acc.add(rk, p.target, str(p.service))
        if tick is not None:
            tick(len(chunk))
    return acc.result()
