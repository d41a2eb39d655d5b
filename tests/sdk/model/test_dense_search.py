"""Ranking by the dense item head: the top-k of every item, or of the beam's, under every mask."""

from __future__ import annotations

import pytest
import torch

from userlayer.sdk import SemanticIdTable, Service
from userlayer.sdk.model import ModelConfig, ModelError, Recommender
from userlayer.sdk.model.decoding import Recommendation, TorchDecoder
from userlayer.sdk.model.dense_search import (
    dense_search,
    fuse_lists,
    head_order,
    head_rankings,
)
from userlayer.sdk.model.tokens import CTX, item_tokens
from userlayer.sdk.model.trie_search import TensorTrie, trie_beam_search


@pytest.fixture(scope="module")
def head(setup: tuple[Recommender, SemanticIdTable]) -> tuple[Recommender, TensorTrie]:
    """The conftest's model with a dense head over its table (random weights)."""
    plain, table = setup
    torch.manual_seed(3)
    m = Recommender(ModelConfig(**{**plain.cfg.to_dict(), "n_items": len(table.codes)})).eval()
    trie = TensorTrie(table)
    m.set_items(torch.tensor([table.codes[i] for i in reversed(trie.items)]))  # not trie order
    with torch.no_grad():
        assert m.item_emb is not None
        m.item_emb.weight.normal_(0, 2.0)  # spread the scores: ties would make orders arbitrary
    return m, trie


def _prompts(table: SemanticIdTable, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    items = sorted(table.codes)
    rows = [
        [
            t
            for j in range(r % 3 + 1)
            for t in [CTX, *item_tokens((6, 6, 6), table.codes[items[5 * r + j]])]
        ]
        + [CTX]
        for r in range(b)
    ]
    t = max(map(len, rows))
    tok = torch.tensor([[0] * (t - len(r)) + r for r in rows])
    return tok, torch.zeros(*tok.shape, 7, dtype=torch.long)


def _brute(m: Recommender, trie: TensorTrie, tok: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    """Every item's log-probability under the head, in trie order, computed the long way."""
    with torch.no_grad():
        scores = m.item_logits(tok, ctx).log_softmax(-1)
    idx = [int(m.item_index(torch.tensor([trie.table.codes[i]]))[0]) for i in trie.items]
    return scores[:, idx]


def test_dense_ranks_every_allowed_item_of_the_rows_service_by_its_score(
    head: tuple[Recommender, TensorTrie],
) -> None:
    m, trie = head
    tok, ctx = _prompts(trie.table, 6)
    services: list[Service | None] = [
        None,
        Service.SAMOKAT,
        Service.KUPER,
        None,
        Service.MEGAMARKET,
        None,
    ]
    exclude = [[], [], [], list(trie.items[:30]), [], ["not-an-item"]]
    allowed = torch.ones(6, len(trie.items), dtype=torch.bool)
    allowed[4, ::2] = False
    got = dense_search(
        m, trie, head_order(m, trie), tok, ctx, 7, 0, services, exclude, None, allowed
    )
    want = _brute(m, trie, tok, ctx)
    for r in range(6):
        ok = [
            j
            for j, it in enumerate(trie.items)
            if services[r] in (None, trie.table.services[it])
            and it not in exclude[r]
            and bool(allowed[r, j])
        ]
        ok.sort(key=lambda j: -float(want[r, j]))
        assert [x.item_id for x in got[r]] == [trie.items[j] for j in ok[:7]]
        assert [x.score for x in got[r]] == pytest.approx(
            [float(want[r, j]) for j in ok[:7]], abs=1e-5
        )


def test_beam_plus_dense_reorders_the_beams_candidates_and_nothing_else(
    head: tuple[Recommender, TensorTrie],
) -> None:
    m, trie = head
    tok, ctx = _prompts(trie.table, 4)
    order = head_order(m, trie)
    beams = trie_beam_search(m, trie, tok, ctx, 8, 8)
    got = dense_search(m, trie, order, tok, ctx, 5, rerank=8)
    everything = dense_search(m, trie, order, tok, ctx, 5)
    want = _brute(m, trie, tok, ctx)
    moved = 0
    for r in range(4):
        cand = {x.item_id for x in beams[r]}
        ids = [x.item_id for x in got[r]]
        assert set(ids) <= cand and len(ids) == 5
        scores = [float(want[r, trie.index[i]]) for i in ids]
        assert scores == sorted(scores, reverse=True)
        assert min(scores) >= max(float(want[r, trie.index[i]]) for i in cand - set(ids))
        moved += ids != [x.item_id for x in beams[r]][:5]
        assert everything[r][0].score >= got[r][0].score  # the beam's best is never above all's
    assert moved  # the head's order is not the beam's (else the test shows nothing)


def test_fusion_adds_reciprocal_ranks_and_keeps_the_beams_order_on_a_tie() -> None:
    beam = [Recommendation(i, 0.0) for i in "abcd"]
    dense = [Recommendation(i, 0.0) for i in "ceab"]
    got = fuse_lists(beam, dense, 4, c=1.0, weight=0.5)
    want = {
        "a": 1 / 2 + 0.5 / 4,
        "b": 1 / 3 + 0.5 / 5,
        "c": 1 / 4 + 0.5 / 2,
        "d": 1 / 5,
        "e": 0.5 / 3,
    }
    assert [x.item_id for x in got] == ["a", "c", "b", "d"]  # e (the head's only) is 5th
    assert [x.score for x in got] == pytest.approx([want[x.item_id] for x in got])
    assert [x.item_id for x in fuse_lists(beam, dense, 4, weight=3.0)][:3] == ["c", "a", "e"]
    tie = fuse_lists([Recommendation("x", 0.0)], [Recommendation("y", 0.0)], 2, weight=1.0)
    assert [x.item_id for x in tie] == ["x", "y"]
    assert fuse_lists([], [], 3) == []


def test_fused_merges_the_beams_list_with_the_heads_own_top_list(
    head: tuple[Recommender, TensorTrie],
) -> None:
    m, trie = head
    tok, ctx = _prompts(trie.table, 4)
    order = head_order(m, trie)
    services: list[Service | None] = [None, Service.SAMOKAT, None, Service.KUPER]
    exclude = [[], [], list(trie.items[:20]), []]
    beams = trie_beam_search(m, trie, tok, ctx, 8, 8, services, exclude)
    heads = dense_search(m, trie, order, tok, ctx, 8, 0, services, exclude)
    got = dense_search(m, trie, order, tok, ctx, 5, 8, services, exclude, fuse=True)
    brought = 0
    for r in range(4):
        want = fuse_lists(beams[r], heads[r], 5)
        assert [x.item_id for x in got[r]] == [x.item_id for x in want]
        assert [x.score for x in got[r]] == pytest.approx([x.score for x in want])
        brought += bool({x.item_id for x in got[r]} - {x.item_id for x in beams[r]})
    assert brought  # the head's list adds items the beam did not return (else nothing shown)
    with pytest.raises(ModelError, match="needs a beam width"):
        dense_search(m, trie, order, tok, ctx, 5, 0, fuse=True)


class _Counting(TorchDecoder):
    """The torch decoder, counting its prefills and decoding steps."""

    prefills = steps = 0

    def prefill(self, tokens: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        self.prefills += 1
        return super().prefill(tokens, ctx)

    def step(self, origin: torch.Tensor, codes: torch.Tensor, level: int) -> torch.Tensor:
        self.steps += 1
        return super().step(origin, codes, level)


def test_the_heads_rankings_together_equal_each_alone_from_one_prefill_and_one_search(
    head: tuple[Recommender, TensorTrie],
) -> None:
    m, trie = head
    tok, ctx = _prompts(trie.table, 4)
    order = head_order(m, trie)
    services: list[Service | None] = [None, Service.SAMOKAT, None, Service.KUPER]
    exclude = [[], [], list(trie.items[:20]), []]
    bonus = torch.zeros(4, len(trie.items))
    bonus[:, 7] = 3.0
    alone = {
        "dense": dense_search(m, trie, order, tok, ctx, 5, 0, services, exclude, bonus=bonus),
        "beam+dense": dense_search(m, trie, order, tok, ctx, 5, 8, services, exclude, bonus=bonus),
        "fused": dense_search(
            m, trie, order, tok, ctx, 5, 8, services, exclude, bonus=bonus, fuse=True
        ),
    }
    dec = _Counting(m)
    got = head_rankings(
        dec,
        trie,
        order,
        tok,
        ctx,
        ("fused", "dense", "beam+dense"),
        5,
        8,
        services,
        exclude,
        bonus=bonus,
    )
    assert set(got) == set(alone)
    for name, lists in alone.items():
        for g, a in zip(got[name], lists, strict=True):
            assert [x.item_id for x in g] == [x.item_id for x in a], name
            assert [x.score for x in g] == pytest.approx([x.score for x in a]), name
    alone_dec = _Counting(m)
    dense_search(alone_dec, trie, order, tok, ctx, 5, 8, services, exclude, fuse=True)
    assert (dec.prefills, dec.steps) == (1, alone_dec.steps)  # one search for all three
    dense_only = _Counting(m)
    head_rankings(dense_only, trie, order, tok, ctx, ("dense",), 5)
    assert (dense_only.prefills, dense_only.steps) == (1, 0)  # the head alone: no search


def test_the_heads_rankings_refuse_an_unknown_ranking_or_a_search_without_width(
    head: tuple[Recommender, TensorTrie],
) -> None:
    m, trie = head
    tok, ctx = _prompts(trie.table, 2)
    order = head_order(m, trie)
    for bad in [("beam",), (), ("dense", "popularity")]:
        with pytest.raises(ModelError, match="head's rankings"):
            head_rankings(m, trie, order, tok, ctx, bad, 5, 8)
    with pytest.raises(ModelError, match="need a beam width"):
        head_rankings(m, trie, order, tok, ctx, ("dense", "beam+dense"), 5, 0)


def test_fused_honours_a_critiques_constraints_and_steer_in_both_lists(
    head: tuple[Recommender, TensorTrie],
) -> None:
    m, trie = head
    tok, ctx = _prompts(trie.table, 2)
    order = head_order(m, trie)
    n = len(trie.items)
    plain = dense_search(m, trie, order, tok, ctx, 5, 8, fuse=True)
    # the beam's last candidate: a large bonus puts it at the top of both lists, so first
    # (the beam adds a bonus at the last level: an item it prunes earlier never gets it)
    last = trie.index[trie_beam_search(m, trie, tok, ctx, 8, 8)[0][-1].item_id]
    assert trie.items[last] not in {x.item_id for x in plain[0]}
    bonus = torch.zeros(2, n)
    bonus[0, last] = 100.0
    got = dense_search(m, trie, order, tok, ctx, 5, 8, bonus=bonus, fuse=True)
    assert got[0][0].item_id == trie.items[last]
    assert got[0][0].score == pytest.approx(1 / 2 + 0.5 / 2)  # rank 1 in both lists
    assert [x.item_id for x in got[1]] == [x.item_id for x in plain[1]]
    # allowed: the head's list and the beam's hold no other item, so neither does the fusion
    allowed = torch.zeros(2, n, dtype=torch.bool)
    keep = [trie.index[x.item_id] for x in plain[0][1:4]] + [last]
    allowed[0, keep] = True
    allowed[1] = True
    got = dense_search(m, trie, order, tok, ctx, 5, 8, allowed=allowed, fuse=True)
    assert {x.item_id for x in got[0]} == {trie.items[j] for j in keep}
    assert len(got[1]) == 5


def test_fusion_refuses_settings_that_have_no_order() -> None:
    one = [Recommendation("a", 0.0)]
    for kw in ({"k": -1}, {"c": -1.0}, {"weight": float("nan")}, {"weight": -0.5}):
        with pytest.raises(ModelError, match="fusion needs"):
            fuse_lists(one, one, **{"k": 2, **kw})  # type: ignore[arg-type]


def test_a_bonus_lifts_an_item_and_the_score_includes_it(
    head: tuple[Recommender, TensorTrie],
) -> None:
    m, trie = head
    tok, ctx = _prompts(trie.table, 2)
    order = head_order(m, trie)
    plain = dense_search(m, trie, order, tok, ctx, 3)
    last = trie.index[dense_search(m, trie, order, tok, ctx, len(trie.items))[0][-1].item_id]
    bonus = torch.zeros(2, len(trie.items))
    bonus[0, last] = 100.0
    got = dense_search(m, trie, order, tok, ctx, 3, bonus=bonus)
    assert got[0][0].item_id == trie.items[last]
    assert got[0][0].score == pytest.approx(float(_brute(m, trie, tok, ctx)[0, last]) + 100.0)
    assert [x.item_id for x in got[1]] == [x.item_id for x in plain[1]]  # the other row keeps its


def test_a_model_without_a_head_or_with_another_catalog_is_refused(
    setup: tuple[Recommender, SemanticIdTable], head: tuple[Recommender, TensorTrie]
) -> None:
    plain, table = setup
    trie = TensorTrie(table)
    with pytest.raises(ModelError, match="no dense item head"):
        head_order(plain, trie)
    m, _ = head
    codes = dict(list(table.codes.items())[:-1])
    fewer = SemanticIdTable(
        codes=codes, services={i: table.services[i] for i in codes}, level_sizes=table.level_sizes
    )
    with pytest.raises(ModelError, match="another Semantic ID table"):
        head_order(m, TensorTrie(fewer))
    moved = dict(table.codes)
    free = next(
        c
        for c in ((a, b, d) for a in range(6) for b in range(6) for d in range(6))
        if c not in set(table.codes.values())
    )
    moved[next(iter(moved))] = free  # the same count, one item's codes the head lacks
    other = SemanticIdTable(codes=moved, services=table.services, level_sizes=table.level_sizes)
    with pytest.raises(ModelError, match="1 of this table's items have codes the head lacks"):
        head_order(m, TensorTrie(other))
    deeper = SemanticIdTable(
        codes={i: (*c, 0) for i, c in table.codes.items()},
        services=table.services,
        level_sizes=(*table.level_sizes, 2),
    )
    with pytest.raises(ModelError, match=r"levels \(6, 6, 6\), this table has \(6, 6, 6, 2\)"):
        head_order(m, TensorTrie(deeper))
    tok, ctx = _prompts(table, 1)
    with pytest.raises(ModelError, match="no dense item scores"):
        dense_search(plain, trie, torch.arange(len(trie.items)), tok, ctx)
