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
``max(beam, k)`` wide, as the engine serves. Ranked together
(:func:`head_lists`, :func:`rank_head`), the modes share each batch's
prefill and beam search.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from userlayer.sdk.model.config import ModelError
from userlayer.sdk.model.decoding import Recommendation
from userlayer.sdk.model.dense_search import HEAD_RANKINGS, MERGED, head_order, head_rankings
from userlayer.sdk.model.transformer import Recommender, RowAdapters
from userlayer.sdk.model.trie_search import TensorTrie
from userlayer.tools.eval.metrics import Accumulator
from userlayer.tools.exceptions import ToolsError
from userlayer.tools.train.examples import Prompt, pack_prompts

__all__ = ["DENSE_MODES", "dense_lists", "head_lists", "rank_dense", "rank_head"]

DENSE_MODES = HEAD_RANKINGS


def head_lists(
    model: Recommender,
    trie: TensorTrie,
    prompts: list[Prompt],
    modes: Sequence[str],
    k: int = 10,
    beam: int = 20,
    batch_size: int = 256,
    exclude_seen: bool = False,
    tick: Callable[[int], None] | None = None,
    adapters: RowAdapters | None = None,
) -> dict[str, list[list[Recommendation]]]:
    """Each mode's top-``k`` per prompt, best first, by mode (see the module docstring).

    The modes share each batch's prefill and beam search
    (:func:`~userlayer.sdk.model.dense_search.head_rankings`, the serving
    engine's ranking); each equals what :func:`dense_lists` gives for it alone.

    Raises:
        ToolsError: an unknown mode, no mode, ``k`` below 1, or a model
            without a head (or with another table's).
    """
    unknown = [m for m in modes if m not in DENSE_MODES]
    if unknown or not modes:
        raise ToolsError(f"the dense rankings should be some of {DENSE_MODES}, got {list(modes)}")
    if k < 1:
        raise ToolsError(f"`k` should be at least 1, got {k}")
    try:
        order = head_order(model, trie)
    except ModelError as e:
        raise ToolsError(str(e)) from e
    out: dict[str, list[list[Recommendation]]] = {m: [] for m in modes}
    width = max(beam, k) if any(m in MERGED for m in modes) else 0
    model.eval()
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s : s + batch_size]
        tok, ctx = pack_prompts(chunk)
        rows = None if adapters is None else adapters.select(torch.arange(s, s + len(chunk)))
        got = head_rankings(
            model,
            trie,
            order,
            tok,
            ctx,
            tuple(modes),
            k,
            width,
            [p.service for p in chunk],
            [p.history for p in chunk] if exclude_seen else None,
            rows,
        )
        for m in modes:
            out[m].extend(got[m])
        if tick is not None:
            tick(len(chunk))
    return out


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
    """The dense head's top-``k`` per prompt, best first, for one ``mode`` (:func:`head_lists`).

    Raises:
        ToolsError: an unknown mode, ``k`` below 1, or a model
            without a head (or with another table's).
    """
    return head_lists(
        model, trie, prompts, (mode,), k, beam, batch_size, exclude_seen, tick, adapters
    )[mode]


def rank_head(
    model: Recommender,
    trie: TensorTrie,
    prompts: list[Prompt],
    modes: Sequence[str] = DENSE_MODES,
    k: int = 10,
    beam: int = 20,
    batch_size: int = 256,
    exclude_seen: bool = False,
    tick: Callable[[int], None] | None = None,
    adapters: RowAdapters | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Each mode's metrics (:func:`head_lists`) per group (``all``, services), by mode.

    Raises:
        ToolsError: an unknown mode, or a model without a head (or with another table's).
    """
    recs = head_lists(
        model, trie, prompts, modes, k, beam, batch_size, exclude_seen, tick, adapters
    )
    out = {}
    for mode, lists in recs.items():
        acc = Accumulator()
        for p, rec in zip(prompts, lists, strict=True):
            acc.add([x.item_id for x in rec], p.target, str(p.service))
        out[mode] = acc.result()
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
    """Metrics of one mode's top-k (:func:`rank_head`) per group (``all``, services).

    Raises:
        ToolsError: an unknown mode, or a model without a head (or with another table's).
    """
    return rank_head(
        model, trie, prompts, (mode,), k, beam, batch_size, exclude_seen, tick, adapters
    )[mode]
