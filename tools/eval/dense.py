"""Ranking with the base's dense item head: alone, reranking the beam's candidates, fused.

A base pretrained with ``--item-head`` scores every catalog item from the
hidden state where the next item's first code is predicted
(:meth:`Recommender.item_logits`). Three rankings use it, as LIGER combines
generative retrieval with dense scoring:

* ``dense``: every item of the request's service by its dense score;
* ``beam+dense``: the beam's candidates (``beam`` of them) reranked by the
  dense score. (Adding the dense head's own top items to the candidates, as
  LIGER does for cold-start items, would make this the ``dense`` ranking
  whenever every item has a dense score: the dense top-k always wins.)
* ``fused``: the beam's list and the head's top list merged by
  reciprocal-rank fusion (:func:`~userlayer.sdk.model.dense_search.fuse_lists`).

All honour the protocol's service restriction and, with ``exclude_seen``, the
history exclusion; per-row adapters apply as in the beam search. The beam is
``max(beam, k)`` wide, as the engine serves.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from userlayer.sdk.model.config import ModelError
from userlayer.sdk.model.decoding import Recommendation
from userlayer.sdk.model.dense_search import MERGED, dense_search, head_order
from userlayer.sdk.model.transformer import Recommender, RowAdapters
from userlayer.sdk.model.trie_search import TensorTrie
from userlayer.tools.eval.metrics import Accumulator
from userlayer.tools.exceptions import ToolsError
from userlayer.tools.train.examples import Prompt, pack_prompts

__all__ = ["DENSE_MODES", "dense_lists", "rank_dense"]

DENSE_MODES = ("dense", "beam+dense", "fused")


def dense_lists(
    model: Recommender,
    trie: TensorTrie,
    prompts: list[Prompt],
    mode: str,
    k: int = 10,
    beam: int = 20,
    batch_size: int = 256,
    exclude_seen: bool = False,
    tick: Callable[[int], None] | None = None,
    adapters: RowAdapters | None = None,
) -> list[list[Recommendation]]:
    """The dense head's top-``k`` per prompt, best first (``mode``: see the module docstring).

    The ranking is the serving engine's (:func:`~userlayer.sdk.model.dense_search.dense_search`).

    Raises:
        ToolsError: an unknown mode, ``k`` below 1, or a model
            without a head (or with another table's).
    """
    if mode not in DENSE_MODES:
        raise ToolsError(f"the dense ranking should be one of {DENSE_MODES}, got {mode!r}")
    if k < 1:
        raise ToolsError(f"`k` should be at least 1, got {k}")
    try:
        order = head_order(model, trie)
    except ModelError as e:
        raise ToolsError(str(e)) from e
    out: list[list[Recommendation]] = []
    model.eval()
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s : s + batch_size]
        tok, ctx = pack_prompts(chunk)
        rows = None if adapters is None else adapters.select(torch.arange(s, s + len(chunk)))
        out.extend(
            dense_search(
                model,
                trie,
                order,
                tok,
                ctx,
                k,
                max(beam, k) if mode in MERGED else 0,
                [p.service for p in chunk],
                [p.history for p in chunk] if exclude_seen else None,
                rows,
                fuse=mode == "fused",
            )
        )
        if tick is not None:
            tick(len(chunk))
    return out


def rank_dense(
    model: Recommender,
    trie: TensorTrie,
    prompts: list[Prompt],
    mode: str,
    k: int = 10,
    beam: int = 20,
    batch_size: int = 256,
    exclude_seen: bool = False,
    tick: Callable[[int], None] | None = None,
    adapters: RowAdapters | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of the dense head's top-k (:func:`dense_lists`) per group (``all``, services).

    Raises:
        ToolsError: an unknown mode, or a model without a head (or with another table's).
    """
    recs = dense_lists(
        model, trie, prompts, mode, k, beam, batch_size, exclude_seen, tick, adapters
    )
    acc = Accumulator()
    for p, rec in zip(prompts, recs, strict=True):
        acc.add([x.item_id for x in rec], p.target, str(p.service))
    return acc.result()
