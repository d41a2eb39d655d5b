"""The tensor trie's beam search returns what the reference ``beam_search`` returns."""

from __future__ import annotations

import pytest
import torch

from userlayer.sdk import SemanticIdTable, Service
from userlayer.sdk.model import (
    AdapterConfig,
    Recommender,
    RowAdapters,
    beam_search,
    new_adapter,
)
from userlayer.sdk.model.tokens import CTX, item_tokens
from userlayer.sdk.model.trie_search import TensorTrie, trie_beam_search


def _batch(table: SemanticIdTable, b: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    items = sorted(table.codes)
    t_len = 1 + 4 * 3
    tok = torch.zeros(b, t_len, dtype=torch.long)
    for r in range(b):
        n = int(torch.randint(0, 4, (1,), generator=g))
        row = [CTX]
        for _ in range(n):
            item = items[int(torch.randint(0, len(items), (1,), generator=g))]
            row = [CTX, *item_tokens(table.level_sizes, table.codes[item]), *row]
        tok[r, t_len - len(row) :] = torch.tensor(row)
    ctx = torch.randint(1, 3, (b, t_len, 7), generator=g) * (tok == CTX)[:, :, None]
    return tok, ctx


@pytest.mark.parametrize("seed", range(6))
def test_same_items_and_scores_as_the_reference(
    setup: tuple[Recommender, SemanticIdTable], seed: int
) -> None:
    model, table = setup
    g = torch.Generator().manual_seed(seed)
    b = 7
    tok, ctx = _batch(table, b, g)
    items = sorted(table.codes)
    svc_choices: list[Service | None] = [None, *Service]
    services = [svc_choices[int(torch.randint(0, 4, (1,), generator=g))] for _ in range(b)]
    exclude = [
        [items[int(i)] for i in torch.randint(0, len(items), (int(r % 3) * 4,), generator=g)]
        + (["not-an-item"] if r == 2 else [])
        for r in range(b)
    ]
    acfg = AdapterConfig(rank=2, alpha=4.0)
    slab = {
        k: torch.stack([new_adapter(model.cfg, acfg, torch.Generator().manual_seed(r))[k]
                        + 0.3 * torch.randn(v.shape, generator=g) for r in range(b)])
        for k, v in new_adapter(model.cfg, acfg).items()
    }  # fmt: skip
    adapters = None if seed % 2 else RowAdapters.gather(acfg, slab, torch.arange(b))
    k, beam = (5, 8) if seed < 3 else (10, 3 * (seed - 2))
    want = beam_search(model, table.trie(), tok, ctx, k, beam, services, exclude, adapters)
    got = trie_beam_search(model, TensorTrie(table), tok, ctx, k, beam, services, exclude, adapters)
    for w, h, s, e in zip(want, got, services, exclude, strict=True):
        assert [x.item_id for x in h] == [x.item_id for x in w]
        assert [x.score for x in h] == pytest.approx([x.score for x in w], abs=1e-5)
        assert all(s is None or table.services[x.item_id] == s for x in h)
        assert not {x.item_id for x in h} & set(e)


def test_a_service_without_items_and_a_whole_excluded_catalog_give_nothing(
    setup: tuple[Recommender, SemanticIdTable],
) -> None:
    model, table = setup
    only = SemanticIdTable(
        codes=dict(list(table.codes.items())[:5]),
        services=dict.fromkeys(list(table.codes)[:5], Service.KUPER),
        level_sizes=table.level_sizes,
    )
    tok, ctx = _batch(only, 2, torch.Generator().manual_seed(0))
    got = trie_beam_search(
        model, TensorTrie(only), tok, ctx, 3, 4, [Service.SAMOKAT, None], [[], list(only.codes)]
    )
    assert got == [[], []]
