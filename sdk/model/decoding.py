"""Batched beam search constrained to the Semantic ID trie.

Every row of a batch decodes together; at each level a beam may only take
codes that the trie allows after its prefix (restricted to the row's service
when given), so every returned ID is a real item. Items can be excluded per
row (a request option: repurchase is normal for groceries). The prompt is run
once; later levels read its keys and values (``KVCache``, one row per
request) through a group view shared by the request's beams, and only the
beams' own new positions (``BeamCache``) are copied when beams reorder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from userlayer.sdk.model.tokens import FIRST_CODE, level_offsets
from userlayer.sdk.model.transformer import BeamCache, KVCache, Recommender, RowAdapters
from userlayer.sdk.schemas import Service
from userlayer.sdk.semantic_ids import SidTrie

__all__ = ["Decoder", "Recommendation", "TorchDecoder", "beam_search", "level_codes"]


def level_codes(sizes: Sequence[int], level: int) -> Tensor:
    """The code indices (into the model's n_codes outputs) of Semantic ID level ``level``."""
    off = level_offsets(sizes)[level]
    return torch.arange(off, off + sizes[level])


@dataclass(frozen=True)
class Recommendation:
    """One recommended item with its log-probability under the model."""

    item_id: str
    score: float


class Decoder(Protocol):
    """One batch's incremental decoding on some backend (torch, ONNX Runtime, TensorRT).

    The adapters of the batch's A rows are bound when the decoder is made;
    beam rows of request ``i`` are the contiguous group ``i*w .. i*w+w-1``.
    """

    def prefill(self, tokens: Tensor, ctx: Tensor) -> Tensor:
        """Run the prompts (B, T); keep their keys and values; next-code logits (B, n_codes)."""

    def step(self, origin: Tensor, codes: Tensor, level: int) -> Tensor:
        """Continue rows ``origin`` (N,) of the kept state with ``codes`` (N, 1) token ids.

        N is a multiple of the B prompts, rows in request-major groups of
        N / B, and each row continues a row of its own request (the prompt's
        cache is shared by the group, not copied). Returns the logits of
        Semantic ID level ``level``'s codes only (N, level size); the state
        now has N rows.
        """

    def items(self) -> Tensor | None:
        """The last prefill's dense item scores (B, n_items) in head order; None without a head."""


class TorchDecoder:
    """:class:`Decoder` on the torch module (reference and fallback backend).

    The prompts' cache stays at one row per request; beams attend to it
    through :meth:`Recommender.decode`'s group view.
    """

    def __init__(
        self,
        model: Recommender,
        adapters: RowAdapters | None = None,
        item_vectors: Tensor | None = None,
    ) -> None:
        self.model = model
        self.adapters = adapters
        self.prompt: KVCache | None = None
        self.beams: BeamCache | None = None
        self.last: Tensor | None = None  # the prompts' last hidden states (dense item head)
        # the head's item vectors made once by a server (Recommender.item_vectors); else per call
        self.item_vectors = item_vectors
        self.device = model.tok.weight.device  # inputs go there, logits come back to the CPU

    def prefill(self, tokens: Tensor, ctx: Tensor) -> Tensor:
        """See :meth:`Decoder.prefill`."""
        dev = self.device
        h, logits, self.prompt = self.model.run(
            tokens.to(dev), ctx.to(dev), self.adapters, return_cache=True
        )
        assert self.prompt is not None
        self.last = h[:, -1]
        self.beams = BeamCache.start(self.prompt)
        out: Tensor = logits[:, -1].float().cpu()
        return out

    def step(self, origin: Tensor, codes: Tensor, level: int) -> Tensor:
        """See :meth:`Decoder.step`."""
        assert self.prompt is not None, "prefill first"
        assert self.beams is not None
        dev = self.device
        logits, self.beams = self.model.decode(
            codes.to(dev),
            self.prompt,
            self.beams,
            origin.to(dev),
            self.adapters,
            level_codes(self.model.cfg.level_sizes, level).to(dev),
        )
        out: Tensor = logits.float().cpu()
        return out

    def items(self) -> Tensor | None:
        """See :meth:`Decoder.items`."""
        assert self.last is not None, "prefill first"
        if not self.model.cfg.n_items:
            return None
        if self.item_vectors is not None:
            out: Tensor = (self.last @ self.item_vectors.T).float().cpu()
        else:
            out = self.model.item_scores(self.last).float().cpu()
        return out


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
    model: Recommender | Decoder,
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
        model: the recommender (eval mode is the caller's business), or a
            :class:`Decoder` of another backend with the adapters bound.
        trie: Semantic ID trie of the catalog.
        tokens: (B, T) left-padded prompts ending with a context position.
        ctx: (B, T, 7) context ids.
        k: items per row.
        beam: beam width (default ``max(k, 10)``); at least ``k``.
        services: per row, the service to restrict to (None: any).
        exclude: per row, item ids never to return.
        adapters: per-row user layers (with a :class:`Recommender` only).
    """
    b = tokens.shape[0]
    beam = max(beam or max(k, 10), k)
    svc = [None if s is None else Service(s) for s in (services or [None] * b)]
    excl = [frozenset(e) for e in (exclude or [()] * b)]
    masks = _Masks(trie)
    offs = level_offsets(trie.table.level_sizes)
    n_levels = len(offs)
    dec = TorchDecoder(model, adapters) if isinstance(model, Recommender) else model
    last = dec.prefill(tokens, ctx)[:, offs[0] : offs[0] + trie.table.level_sizes[0]]
    # beams: per row a list of (prefix, score); start with one empty prefix
    prefixes: list[list[tuple[int, ...]]] = [[()] for _ in range(b)]
    scores = torch.zeros(b, 1)
    for level in range(n_levels):
        size = trie.table.level_sizes[level]
        lp = last.float().log_softmax(-1)  # (R, size): this level's codes
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
        scores = torch.tensor(flat_scores).view(b, w)
        step = torch.tensor(flat_codes).view(-1, 1) + FIRST_CODE + offs[level]
        last = dec.step(torch.tensor(flat_origin), step, level + 1)
    return [[] for _ in range(b)]
