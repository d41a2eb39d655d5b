"""Batched beam search constrained to the Semantic ID trie.

Every row of a batch decodes together; at each level a beam may only take
codes that the trie allows after its prefix (restricted to the row's service
when given), so every returned ID is a real item. Items can be excluded per
row (a request option: repurchase is normal for groceries). The prompt is run
once; later levels reuse its keys and values (``KVCache``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from userlayer.sdk.model.tokens import FIRST_CODE, level_offsets
from userlayer.sdk.model.transformer import Recommender, RowAdapters
from userlayer.sdk.schemas import Service
from userlayer.sdk.semantic_ids import SidTrie

__all__ = ["Recommendation", "beam_search"]


@dataclass(frozen=True)
class Recommendation:
    """One recommended item with its log-probability under the model."""

    item_id: str
    score: float


class _Masks:
    """Allowed-code masks per (prefix, service, excluded set), cached."""

    def __init__(self, trie: SidTrie) -> None:
        self.trie = trie
        self.sizes = trie.table.level_sizes
        self.cache: dict[tuple[tuple[int, ...], Service | None], Tensor] = {}

    def get(
        self, prefix: tuple[int, ...], service: Service | None, exclude: frozenset[str]
    ) -> Tensor:
        key = (prefix, service)
        m = self.cache.get(key)
        if m is None:
            m = torch.zeros(self.sizes[len(prefix)], dtype=torch.bool)
            allowed = self.trie.allowed(prefix, service)
            if allowed:
                m[allowed] = True
            self.cache[key] = m
        if exclude and len(prefix) == len(self.sizes) - 1:
            m = m.clone()
            for code in torch.nonzero(m).flatten().tolist():
                if self.trie.table.item_of((*prefix, code)) in exclude:
                    m[code] = False
        return m


@torch.no_grad()
def beam_search(
    model: Recommender,
    trie: SidTrie,
    tokens: Tensor,
    ctx: Tensor,
    k: int = 10,
    beam: int | None = None,
    services: Sequence[Service | str | None] | None = None,
    exclude: Sequence[Sequence[str]] | None = None,
    adapters: RowAdapters | None = None,
) -> list[list[Recommendation]]:
    """Top-``k`` distinct real items per row, best first.

    Args:
        model: the recommender (eval mode is the caller's business).
        trie: Semantic ID trie of the catalog.
        tokens: (B, T) left-padded prompts ending with a context position.
        ctx: (B, T, 7) context ids.
        k: items per row.
        beam: beam width (default ``max(k, 10)``); at least ``k``.
        services: per row, the service to restrict to (None: any).
        exclude: per row, item ids never to return.
        adapters: per-row user layers.
    """
    b = tokens.shape[0]
    beam = max(beam or max(k, 10), k)
    svc = [None if s is None else Service(s) for s in (services or [None] * b)]
    excl = [frozenset(e) for e in (exclude or [()] * b)]
    masks = _Masks(trie)
    offs = level_offsets(trie.table.level_sizes)
    n_levels = len(offs)
    logits, cache = model(tokens, ctx, adapters, return_cache=True)
    assert cache is not None
    last = logits[:, -1]  # (B, n_codes)
    # beams: per row a list of (prefix, score); start with one empty prefix
    prefixes: list[list[tuple[int, ...]]] = [[()] for _ in range(b)]
    scores = torch.zeros(b, 1)
    for level in range(n_levels):
        size = trie.table.level_sizes[level]
        lp = last[:, offs[level] : offs[level] + size].float().log_softmax(-1)  # (R, size)
        allowed = torch.stack(
            [masks.get(p, svc[r], excl[r]) for r, ps in enumerate(prefixes) for p in ps]
        )
        lp = lp.masked_fill(~allowed, float("-inf"))
        cand = (scores.reshape(-1, 1) + lp).view(b, -1, size)  # (B, beams, size)
        width = beam if level < n_levels - 1 else k
        flat = cand.view(b, -1)
        top = flat.topk(min(width, flat.shape[1]), dim=-1)
        new_prefixes: list[list[tuple[int, ...]]] = []
        origin: list[int] = []
        new_scores: list[list[float]] = []
        codes: list[int] = []
        n_beams = cand.shape[1]
        for r in range(b):
            ps, sc = [], []
            for val, idx in zip(top.values[r].tolist(), top.indices[r].tolist(), strict=True):
                if val == float("-inf"):
                    continue
                src, code = divmod(idx, size)
                ps.append((*prefixes[r][src], code))
                sc.append(val)
                origin.append(r * n_beams + src)
                codes.append(code)
            new_prefixes.append(ps)
            new_scores.append(sc)
        prefixes = new_prefixes
        if level == n_levels - 1:
            return [
                [Recommendation(str(trie.table.item_of(p)), s) for p, s in zip(ps, sc, strict=True)]
                for ps, sc in zip(prefixes, new_scores, strict=True)
            ]
        # uneven beams (dead prefixes) are padded with -inf copies so the tensor stays (B, w)
        w = max(1, max(len(ps) for ps in prefixes))
        flat_origin, flat_codes, flat_scores = [], [], []
        pos = 0
        for r in range(b):
            n = len(prefixes[r])
            for j in range(w):
                if j < n:
                    flat_origin.append(origin[pos + j])
                    flat_codes.append(codes[pos + j])
                    flat_scores.append(new_scores[r][j])
                else:
                    flat_origin.append(r * n_beams)
                    flat_codes.append(0)
                    flat_scores.append(float("-inf"))
            if n < w:
                prefixes[r] = prefixes[r] + [prefixes[r][0] if n else (0,) * (level + 1)] * (w - n)
            pos += n
        sel = torch.tensor(flat_origin)
        cache = cache.select(sel)
        scores = torch.tensor(flat_scores).view(b, w)
        step = torch.tensor(flat_codes).view(-1, 1) + FIRST_CODE + offs[level]
        ad = None if adapters is None else adapters.select(torch.arange(b).repeat_interleave(w))
        logits, cache = model(
            step,
            torch.zeros(b * w, 1, ctx.shape[-1], dtype=torch.long),
            ad,
            cache=cache,
            return_cache=True,
        )
        assert cache is not None
        last = logits[:, -1]
    return [[] for _ in range(b)]
