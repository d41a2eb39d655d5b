"""Serving prompts: a request's session items and context as model inputs.

The private regime's prompt (see :mod:`userlayer.sdk.model.tokens`): one step
per session item (its context position carries the request's context and the
item's own service), then the context position of the item to generate. Items
the catalog does not know are skipped and reported. A user layer's released
favourites (:mod:`userlayer.sdk.privacy.favourites`) come first, as history
steps of the same kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from userlayer.sdk.model.tokens import CTX, MODE_INDEX, ContextVocab, item_tokens
from userlayer.sdk.schemas import Context, Mode, Service
from userlayer.sdk.semantic_ids import SemanticIdTable

__all__ = ["Prompt", "encode_request", "mode_one_hot", "pack_prompts"]


@dataclass(frozen=True)
class Prompt:
    """Tokens and context ids of one request, and the session items left out."""

    tokens: list[int]
    ctx: list[list[int]]
    unknown_items: tuple[str, ...] = ()


def encode_request(
    service: Service | str,
    context: Context,
    session: Sequence[str],
    table: SemanticIdTable,
    vocab: ContextVocab,
    max_items: int | None = None,
    favourites: Sequence[str] = (),
) -> Prompt:
    """The prompt of a request: favourites, the last session items, then CTX.

    ``favourites`` are the user layer's released items, least frequent first;
    those the catalog does not know (an older catalog's) are left out
    silently: they are the layer's, not the request's. At most ``max_items``
    items in all: the session's last ones first, then the most frequent
    favourites that still fit.
    """
    known = [i for i in session if i in table.codes]
    unknown = tuple(i for i in session if i not in table.codes)
    if max_items is not None:
        known = known[-max_items:] if max_items > 0 else []
    favs = [i for i in favourites if i in table.codes]
    if max_items is not None:  # the session first; the most frequent favourites fill the rest
        room = max(0, max_items - len(known))
        favs = favs[len(favs) - room :] if room else []
    known = favs + known
    zero = [0] * len(vocab.sizes)
    toks: list[int] = []
    ctx: list[list[int]] = []
    for item in known:
        codes = item_tokens(table.level_sizes, table.codes[item])
        toks += [CTX, *codes]
        ctx += [list(vocab.encode_context(table.services[item], context))] + [zero] * len(codes)
    toks.append(CTX)
    ctx.append(list(vocab.encode_context(service, context)))
    return Prompt(toks, ctx, unknown)


def mode_one_hot(mode: Mode | str, n_modes: int) -> list[float]:
    """Mode-component weights of a stated mode (zeros when it has no component)."""
    out = [0.0] * n_modes
    idx = MODE_INDEX.get(Mode(mode))
    if idx is not None and idx < n_modes:
        out[idx] = 1.0
    return out


def pack_prompts(
    prompts: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]], n_ctx: int
) -> tuple[Tensor, Tensor]:
    """Left-pad token/context prompts into (B, T) and (B, T, n_ctx) int64 tensors."""
    t_len = max(len(t) for t, _ in prompts)
    tok = torch.zeros(len(prompts), t_len, dtype=torch.long)
    ctx = torch.zeros(len(prompts), t_len, n_ctx, dtype=torch.long)
    for i, (t, c) in enumerate(prompts):
        tok[i, t_len - len(t) :] = torch.tensor(list(t), dtype=torch.long)
        ctx[i, t_len - len(t) :] = torch.tensor([list(r) for r in c], dtype=torch.long)
    return tok, ctx
