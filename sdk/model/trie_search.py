"""Constrained beam search with the trie as tensors: no per-beam Python.

:func:`userlayer.sdk.model.decoding.beam_search` walks a dict trie and builds
masks beam by beam; this module keeps the same search in tensor operations
(the reference stays, and ``tests/sdk/model/test_trie_search.py`` checks that
both return the same items and scores on random batches):

- :class:`TensorTrie`: per level ``l`` a child table ``(nodes_l, codes_l)``
  holding the next level's node id (at the last level, the item's index) or
  -1, and each node's bitmask of the services below it;
- allowed codes of every beam at once by one gather of its node's row, the
  row's service as a bit test, exclusions as a comparison against the row's
  excluded item indices (last level only);
- top-k and the beam bookkeeping (origin, code, next node) as tensor ops;
  dead beams keep a score of -inf instead of being compacted away.

The child tables are dense: ``sum_l nodes_l * codes_l`` int64 entries (about
12 MB for a 20k-item catalog with 256 codes per level); a CSR layout is the
next step for catalogs of millions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from userlayer.sdk.model.decoding import Decoder, Recommendation, TorchDecoder
from userlayer.sdk.model.tokens import FIRST_CODE, level_offsets
from userlayer.sdk.model.transformer import Recommender, RowAdapters
from userlayer.sdk.schemas import Service
from userlayer.sdk.semantic_ids import SemanticIdTable

__all__ = ["TensorTrie", "item_mask", "trie_beam_search"]

_BIT = {s: 1 << i for i, s in enumerate(Service)}
_ALL = (1 << len(Service)) - 1


class TensorTrie:
    """A Semantic ID table's trie as per-level child tables (see the module docstring)."""

    def __init__(self, table: SemanticIdTable) -> None:
        self.table = table
        self.items = sorted(table.codes)
        self.index = {item: i for i, item in enumerate(self.items)}
        sizes = table.level_sizes
        ids: list[dict[tuple[int, ...], int]] = [{} for _ in range(len(sizes) + 1)]
        ids[0][()] = 0
        for item in self.items:
            codes = tuple(table.codes[item])
            for depth in range(1, len(sizes)):
                ids[depth].setdefault(codes[:depth], len(ids[depth]))
        self.child: list[Tensor] = []
        self.bits: list[Tensor] = []  # per level: services below each node of the next level
        for depth, size in enumerate(sizes):
            last = depth == len(sizes) - 1
            n_next = len(self.items) if last else len(ids[depth + 1])
            child = torch.full((len(ids[depth]), size), -1, dtype=torch.long)
            bits = torch.zeros(max(n_next, 1), dtype=torch.long)
            for item in self.items:
                codes = tuple(table.codes[item])
                nxt = self.index[item] if last else ids[depth + 1][codes[: depth + 1]]
                child[ids[depth][codes[:depth]], codes[depth]] = nxt
                bits[nxt] |= _BIT[Service(table.services[item])]
            self.child.append(child)
            self.bits.append(bits)
        # per level: the node of the next level each item lies under (at the last: itself)
        self.item_node: list[Tensor] = [
            torch.tensor(
                [
                    self.index[it]
                    if d == len(sizes) - 1
                    else ids[d + 1][tuple(table.codes[it])[: d + 1]]
                    for it in self.items
                ],
                dtype=torch.long,
            )
            for d in range(len(sizes))
        ]

    def reachable(self, allowed: Tensor) -> list[Tensor]:
        """Per level, which next-level nodes have an allowed item below, per row.

        ``allowed`` (B, n_items) bool, in :attr:`items` order; returns, per
        level, (B, nodes of the next level) bool (at the last level: ``allowed``).
        """
        out = []
        for d, nodes in enumerate(self.item_node):
            if d == len(self.item_node) - 1:  # the last level's nodes are the items
                out.append(allowed)
                break
            n_next = int(self.bits[d].shape[0])
            z = torch.zeros(allowed.shape[0], n_next, dtype=torch.uint8)
            src = allowed.to(torch.uint8)
            z.scatter_reduce_(1, nodes.expand(allowed.shape[0], -1), src, "amax")
            out.append(z.bool())
        return out


def _row_bits(b: int, services: Sequence[Service | str | None] | None) -> Tensor:
    """Each row's service bit (all bits for a row without a service)."""
    return torch.tensor(
        [_ALL if s is None else _BIT[Service(s)] for s in (services or [None] * b)],
        dtype=torch.long,
    )


def item_mask(
    trie: TensorTrie,
    b: int,
    services: Sequence[Service | str | None] | None = None,
    exclude: Sequence[Sequence[str]] | None = None,
    allowed: Tensor | None = None,
) -> Tensor:
    """Which items (B, n_items) a row may get: its service's, not excluded, allowed."""
    ok = (trie.bits[-1][None, : len(trie.items)] & _row_bits(b, services)[:, None]) != 0
    for r, e in enumerate(exclude or ()):
        ok[r, [trie.index[i] for i in e if i in trie.index]] = False
    if allowed is not None:
        ok &= allowed
    return ok


@torch.no_grad()
def trie_beam_search(
    model: Recommender | Decoder,
    trie: TensorTrie,
    tokens: Tensor,
    ctx: Tensor,
    k: int = 10,
    beam: int | None = None,
    services: Sequence[Service | str | None] | None = None,
    exclude: Sequence[Sequence[str]] | None = None,
    adapters: RowAdapters | None = None,
    allowed: Tensor | None = None,
    bonus: Tensor | None = None,
) -> list[list[Recommendation]]:
    """Top-``k`` distinct real items per row, best first; the arguments of ``beam_search``.

    ``allowed`` (B, n_items) bool in ``trie.items`` order: hard constraints
    (a critique's). No other item is ever returned: every level masks the
    codes under which no allowed item remains, so beams are not spent on
    them. ``bonus`` (B, n_items): added to an item's log-probability when its
    last code is chosen (a critique's soft steer); the scores then include it.
    """
    b = tokens.shape[0]
    beam = max(beam or max(k, 10), k)
    row_bits = _row_bits(b, services)
    reach = None
    if allowed is not None:  # allowed and of the row's service, for every level's pruning
        reach = trie.reachable(item_mask(trie, b, services, None, allowed))
    excl_lists = [[trie.index[i] for i in e if i in trie.index] for e in (exclude or [()] * b)]
    n_excl = max((len(e) for e in excl_lists), default=0)
    excl = torch.full((b, max(n_excl, 1)), -1, dtype=torch.long)
    for r, e in enumerate(excl_lists):
        excl[r, : len(e)] = torch.tensor(e, dtype=torch.long)
    sizes = trie.table.level_sizes
    offs = level_offsets(sizes)
    dec = TorchDecoder(model, adapters) if isinstance(model, Recommender) else model
    logits = dec.prefill(tokens, ctx)[:, offs[0] : offs[0] + sizes[0]]  # (B * w, size), w = 1
    node = torch.zeros(b, 1, dtype=torch.long)
    scores = torch.zeros(b, 1)
    rows = torch.arange(b)[:, None]
    for level, size in enumerate(sizes):
        w = node.shape[1]
        lp = logits.float().log_softmax(-1)  # this level's codes
        nxt = trie.child[level][node.reshape(-1)]  # (B * w, size)
        ok = nxt >= 0
        ok &= (trie.bits[level][nxt.clamp(min=0)] & row_bits.repeat_interleave(w)[:, None]) != 0
        final = level == len(sizes) - 1
        if final and n_excl:
            hit = (nxt[:, :, None] == excl.repeat_interleave(w, 0)[:, None, :]).any(-1)
            ok &= ~hit
        if reach is not None:
            ok &= reach[level].gather(1, nxt.clamp(min=0).view(b, w * size)).view(b * w, size)
        if final and bonus is not None:
            lp = lp + bonus.gather(1, nxt.clamp(min=0).view(b, w * size)).view(b * w, size)
        lp = lp.masked_fill(~ok, float("-inf"))
        cand = (scores.reshape(-1, 1) + lp).view(b, w * size)
        top = cand.topk(min(k if final else beam, cand.shape[1]), dim=-1)
        src, code = top.indices // size, top.indices % size
        node = nxt.view(b, w, size)[rows, src, code]
        scores = top.values
        if final:
            return [
                [
                    Recommendation(trie.items[int(n)], float(s))
                    for n, s in zip(node[r].tolist(), scores[r].tolist(), strict=True)
                    if s != float("-inf")
                ]
                for r in range(b)
            ]
        node = node.clamp(min=0)  # dead beams (-inf) read node 0; their scores stay -inf
        origin = (rows * w + src).reshape(-1)
        logits = dec.step(origin, (code + FIRST_CODE + offs[level]).reshape(-1, 1), level + 1)
    return [[] for _ in range(b)]
