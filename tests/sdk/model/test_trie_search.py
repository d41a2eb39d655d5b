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


def _every_item(model: Recommender, table: SemanticIdTable, tok, ctx, services):  # type: ignore[no-untyped-def]
    """Every item of each row's service with its log-probability (an exhaustive search)."""
    n = len(table.codes)
    return beam_search(model, table.trie(), tok, ctx, n, n, services)


@pytest.mark.parametrize("seed", range(4))
def test_allowed_items_only_and_the_best_of_them(
    setup: tuple[Recommender, SemanticIdTable], seed: int
) -> None:
    """A hard mask returns the top allowed items exactly (beam wide enough to be exhaustive).

    The masks prune every level (beams never go under codes with no allowed item), so
    even a narrow beam returns only allowed items, and as many as exist up to k.
    """
    model, table = setup
    g = torch.Generator().manual_seed(100 + seed)
    b = 6
    tok, ctx = _batch(table, b, g)
    trie = TensorTrie(table)
    services: list[Service | None] = [None, Service.KUPER, None, Service.SAMOKAT, None, None]
    allowed = (
        torch.rand(b, len(trie.items), generator=g)
        < torch.tensor([0.5, 0.3, 0.05, 1.0, 0.0, 0.02])[:, None]
    )
    everything = _every_item(model, table, tok, ctx, services)
    for beam in (36, 2):
        got = trie_beam_search(model, trie, tok, ctx, 5, beam, services, None, None, allowed)
        for r in range(b):
            ok = {trie.items[i] for i in torch.nonzero(allowed[r]).flatten().tolist()}
            ok = {i for i in ok if services[r] is None or table.services[i] == services[r]}
            assert {x.item_id for x in got[r]} <= ok
            assert len(got[r]) == min(5, len(ok))  # no beam is lost under a masked subtree
            if beam == 36:
                best = [x for x in everything[r] if x.item_id in ok][:5]
                assert [x.item_id for x in got[r]] == [x.item_id for x in best]
                assert [x.score for x in got[r]] == pytest.approx([x.score for x in best], abs=1e-5)
    assert got[4] == []  # nothing allowed: nothing returned


def test_a_bonus_adds_to_the_chosen_items_scores(
    setup: tuple[Recommender, SemanticIdTable],
) -> None:
    model, table = setup
    g = torch.Generator().manual_seed(7)
    tok, ctx = _batch(table, 2, g)
    trie = TensorTrie(table)
    bonus = torch.zeros(2, len(trie.items))
    bonus[0] = torch.rand(len(trie.items), generator=g) * 3
    everything = _every_item(model, table, tok, ctx, [None, None])
    got = trie_beam_search(model, trie, tok, ctx, 5, 36, None, None, None, None, bonus)
    base = {x.item_id: x.score for x in everything[0]}
    want = sorted(base, key=lambda i: -(base[i] + float(bonus[0, trie.index[i]])))[:5]
    assert [x.item_id for x in got[0]] == want
    for x in got[0]:
        assert x.score == pytest.approx(
            base[x.item_id] + float(bonus[0, trie.index[x.item_id]]), abs=1e-5
        )
    assert [x.item_id for x in got[1]] == [x.item_id for x in everything[1][:5]]  # zero bonus
