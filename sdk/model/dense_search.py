"""Ranking with the base's dense item head: every item scored, or the beam's reranked.

A base pretrained with a dense item head (``ModelConfig.n_items``) scores
every catalog item from the hidden state where the next item's first code is
predicted (:meth:`~userlayer.sdk.model.transformer.Recommender.item_scores`).
LIGER combines generative retrieval with such dense scoring; three rankings use
the head here, beside the beam search alone (``beam``):

* ``dense``: every item of the row's service by its dense score. One prefill
  and one product with the item table; no decoding step at all.
* ``beam+dense``: the constrained beam's candidates (``beam`` of them)
  reranked by the dense score. As for the beam ranking, one width serves a
  batch (the engine's: the beam or the largest ``k`` of its rows), so a row
  asking for many items widens its batch-mates' candidates.

* ``fused``: the beam's list and the head's own top list (``beam`` items
  each) merged by reciprocal-rank fusion, ``1 / (c + beam rank) + w / (c +
  head rank)`` (ranks from 1; an item missing from a list gets nothing from
  it), as LIGER merges generative and dense retrieval. The head's list brings
  items the beam pruned. ``c`` 1 and ``w`` 0.5 were the validation choice
  (by NDCG@10) of c in {1, 10, 60} and w in {0.25, 0.5, 1, 2} on one
  Beauty base; on each of three seeds' bases they beat the beam on the
  validation and the test split (``experiments/list_union.py``,
  docs/model.md). As for ``beam+dense``, both lists are as wide as the
  batch's beam, so a row's result can depend on its batch-mates' ``k``.

All honour what the beam search honours, row by row: the service, excluded
items, a critique's hard constraints (``allowed``: no other item is returned)
and its soft steer (``bonus``, added to the item's log-probability). The
score returned is the item's log-probability under the head (log-softmax over
the whole catalog), plus the bonus; for ``fused``, the fused score (a sum of
reciprocal ranks, comparable only within one row's list).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from userlayer.sdk.model.config import ModelError
from userlayer.sdk.model.decoding import Decoder, Recommendation, TorchDecoder
from userlayer.sdk.model.transformer import Recommender, RowAdapters
from userlayer.sdk.model.trie_search import TensorTrie, item_mask, trie_beam_search
from userlayer.sdk.schemas import Service

__all__ = [
    "FUSION_C",
    "FUSION_DENSE_WEIGHT",
    "HEAD_RANKINGS",
    "MERGED",
    "RANKINGS",
    "dense_search",
    "fuse_lists",
    "head_order",
    "head_rankings",
]

RANKINGS = ("beam", "dense", "beam+dense", "fused")
MERGED = ("beam+dense", "fused")  # the rankings that run the beam and read the head
HEAD_RANKINGS = ("dense", *MERGED)  # the rankings that read the head
FUSION_C = 1.0  # reciprocal-rank fusion's rank offset (``fused``)
FUSION_DENSE_WEIGHT = 0.5  # the head's list's weight beside the beam's (``fused``)


def head_order(model: Recommender, trie: TensorTrie) -> Tensor:
    """The head's index of each of ``trie.items`` (n_items,).

    Raises:
        ModelError: if the model has no dense head, or its head was trained on
            another Semantic ID table (another item count, or codes it lacks).
    """
    if not model.cfg.n_items:
        raise ModelError("this model has no dense item head (pretrain with --item-head)")
    sizes = tuple(trie.table.level_sizes)
    if sizes != tuple(model.cfg.level_sizes):
        raise ModelError(
            f"the dense item head was trained on Semantic IDs of levels "
            f"{tuple(model.cfg.level_sizes)}, this table has {sizes}"
        )
    if len(trie.items) != model.cfg.n_items:
        raise ModelError(
            f"the dense item head was trained on another Semantic ID table "
            f"({model.cfg.n_items} items; this table has {len(trie.items)})"
        )
    codes = torch.tensor([trie.table.codes[i] for i in trie.items], dtype=torch.long)
    idx = model.item_index(codes.to(model.item_keys.device)).cpu()
    lacking = int((idx < 0).sum())
    if lacking:
        raise ModelError(
            f"the dense item head was trained on another Semantic ID table "
            f"({lacking} of this table's items have codes the head lacks)"
        )
    return idx


@torch.no_grad()
def dense_search(
    model: Recommender | Decoder,
    trie: TensorTrie,
    order: Tensor,
    tokens: Tensor,
    ctx: Tensor,
    k: int = 10,
    rerank: int = 0,
    services: Sequence[Service | str | None] | None = None,
    exclude: Sequence[Sequence[str]] | None = None,
    adapters: RowAdapters | None = None,
    allowed: Tensor | None = None,
    bonus: Tensor | None = None,
    fuse: bool = False,
) -> list[list[Recommendation]]:
    """Top-``k`` items per row by the dense head, best first.

    ``order``: :func:`head_order`. ``rerank`` > 0 ranks only the candidates of
    a constrained beam search of that width (``beam+dense``), or with ``fuse``
    merges that beam's list with the head's top ``rerank`` (``fused``); 0
    ranks every item (``dense``). The other arguments are
    :func:`trie_beam_search`'s. :func:`head_rankings` gives several of these
    rankings of the same rows from one prefill and one beam search.

    Raises:
        ModelError: if the decoder gives no dense scores (a model or an export
            without the head), or ``fuse`` without a beam width.
    """
    if fuse and rerank < 1:
        raise ModelError(f"the fused ranking needs a beam width (`rerank` >= 1), got {rerank}")
    ranking = "fused" if fuse else "beam+dense" if rerank else "dense"
    return head_rankings(
        model,
        trie,
        order,
        tokens,
        ctx,
        (ranking,),
        k,
        rerank,
        services,
        exclude,
        adapters,
        allowed,
        bonus,
    )[ranking]


@torch.no_grad()
def head_rankings(
    model: Recommender | Decoder,
    trie: TensorTrie,
    order: Tensor,
    tokens: Tensor,
    ctx: Tensor,
    rankings: Sequence[str],
    k: int = 10,
    beam: int = 0,
    services: Sequence[Service | str | None] | None = None,
    exclude: Sequence[Sequence[str]] | None = None,
    adapters: RowAdapters | None = None,
    allowed: Tensor | None = None,
    bonus: Tensor | None = None,
) -> dict[str, list[list[Recommendation]]]:
    """Several of the head's rankings of the same rows, by name, best first.

    ``rankings``: any of ``dense``, ``beam+dense`` and ``fused``. They share
    one prefill (the head's scores) and, where one of them needs it, one
    constrained beam search of width ``beam``: each ranking equals what
    :func:`dense_search` gives for it alone (with ``rerank`` = ``beam``), for
    the price of one prefill and one search. The other arguments are
    :func:`dense_search`'s.

    Raises:
        ModelError: an unknown ranking, ``beam+dense`` or ``fused`` without a
            beam width, or a decoder without dense scores.
    """
    unknown = [r for r in rankings if r not in HEAD_RANKINGS]
    if unknown or not rankings:
        raise ModelError(f"the head's rankings are {HEAD_RANKINGS}, got {list(rankings)}")
    searched = any(r in MERGED for r in rankings)
    if searched and beam < 1:
        raise ModelError(f"rankings {list(rankings)} need a beam width (>= 1), got {beam}")
    b = tokens.shape[0]
    dec = TorchDecoder(model, adapters) if isinstance(model, Recommender) else model
    ok = item_mask(trie, b, services, exclude, allowed)
    beams: list[list[Recommendation]] = []
    if searched:  # its prefill is the head's too
        beams = trie_beam_search(
            dec, trie, tokens, ctx, beam, beam, services, exclude, None, allowed, bonus
        )
    else:
        dec.prefill(tokens, ctx)
    scores = dec.items()
    if scores is None:
        raise ModelError("no dense item scores: the model or its export has no dense item head")
    lp = scores[:, order.to(scores.device)].float().log_softmax(-1)
    if bonus is not None:
        lp = lp + bonus
    allowed_lp = lp.masked_fill(~ok, float("-inf"))  # what dense and fused rank
    out: dict[str, list[list[Recommendation]]] = {}
    if "dense" in rankings:
        out["dense"] = _top(trie, allowed_lp, k)
    if "beam+dense" in rankings:
        cand = torch.zeros_like(ok)
        for r, recs in enumerate(beams):
            cand[r, [trie.index[x.item_id] for x in recs]] = True
        out["beam+dense"] = _top(trie, allowed_lp.masked_fill(~cand, float("-inf")), k)
    if "fused" in rankings:
        heads = _top(trie, allowed_lp, beam)
        out["fused"] = [fuse_lists(bm, hd, k) for bm, hd in zip(beams, heads, strict=True)]
    return out


def _top(trie: TensorTrie, lp: Tensor, k: int) -> list[list[Recommendation]]:
    """Each row's top ``k`` of ``lp`` (rows, items in trie order), masked items (-inf) left out."""
    top = lp.topk(min(k, lp.shape[1]), dim=-1)
    return [
        [
            Recommendation(trie.items[int(j)], float(s))
            for j, s in zip(top.indices[r].tolist(), top.values[r].tolist(), strict=True)
            if s != float("-inf")
        ]
        for r in range(lp.shape[0])
    ]


def fuse_lists(
    beam: Sequence[Recommendation],
    dense: Sequence[Recommendation],
    k: int,
    c: float = FUSION_C,
    weight: float = FUSION_DENSE_WEIGHT,
) -> list[Recommendation]:
    """The top ``k`` of two ranked lists by reciprocal-rank fusion, the fused score with each.

    An item scores ``1 / (c + its beam rank) + weight / (c + its dense
    rank)``, ranks from 1, nothing from a list it is missing from; a tie
    keeps the beam's order, then the head's. Fewer than ``k`` items come
    back where the two lists hold fewer.

    Raises:
        ModelError: a negative ``k`` or ``c``, or a weight that is not finite and >= 0.
    """
    if k < 0 or not c >= 0.0 or not 0.0 <= weight < math.inf:
        raise ModelError(
            f"fusion needs k >= 0, c >= 0 and a finite weight >= 0, got {k}, {c}, {weight}"
        )
    score: dict[str, float] = {}
    for r, x in enumerate(beam):
        score[x.item_id] = score.get(x.item_id, 0.0) + 1.0 / (c + r + 1)
    for r, x in enumerate(dense):
        score[x.item_id] = score.get(x.item_id, 0.0) + weight / (c + r + 1)
    ranked = sorted(score, key=lambda i: -score[i])  # stable: first seen wins a tie
    return [Recommendation(i, score[i]) for i in ranked[:k]]
