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
from userlayer.sdk.model.tokens import CTX


def _prompts(b: int) -> tuple[torch.Tensor, torch.Tensor]:
    tok = torch.tensor([[CTX, 2, 8, 14, CTX]] * b)
    return tok, torch.ones(b, 5, 7, dtype=torch.long) * (tok == CTX)[..., None]


@pytest.mark.parametrize("service", [None, *Service])
def test_only_real_items_of_the_asked_service(
    setup: tuple[Recommender, SemanticIdTable], service: Service | None
) -> None:
    model, table = setup
    tok, ctx = _prompts(3)
    recs = beam_search(model, table.trie(), tok, ctx, k=8, beam=12, services=[service] * 3)
    for row in recs:
        assert len(row) == 8
        assert len({r.item_id for r in row}) == 8
        assert all(r.item_id in table.codes for r in row)
        assert service is None or all(table.services[r.item_id] == service for r in row)
        assert [r.score for r in row] == sorted((r.score for r in row), reverse=True)


def test_beam_scores_are_exact_log_probs(setup: tuple[Recommender, SemanticIdTable]) -> None:
    model, table = setup
    tok, ctx = _prompts(1)
    top = beam_search(model, table.trie(), tok, ctx, k=3, beam=60)[0]
    # teacher-forced log-prob of the best item, restricted per level to the trie
    trie = table.trie()
    codes = table.codes[top[0].item_id]
    seq, lp = tok.clone(), 0.0
    offs = (0, 6, 12)
    for lvl in range(3):
        with torch.no_grad():
            logits, _ = model(
                seq, torch.cat([ctx, torch.zeros(1, seq.shape[1] - 5, 7, dtype=torch.long)], 1)
            )
        allowed = trie.allowed(codes[:lvl])
        row = logits[0, -1, offs[lvl] : offs[lvl] + 6].log_softmax(-1)
        lp += float(row[codes[lvl]])
        assert codes[lvl] in allowed
        seq = torch.cat([seq, torch.tensor([[2 + offs[lvl] + codes[lvl]]])], 1)
    assert top[0].score == pytest.approx(lp, abs=1e-4)


def test_exclusion_and_mixed_rows(setup: tuple[Recommender, SemanticIdTable]) -> None:
    model, table = setup
    tok, ctx = _prompts(2)
    first = beam_search(model, table.trie(), tok, ctx, k=5)
    banned = [r.item_id for r in first[0][:3]]
    again = beam_search(model, table.trie(), tok, ctx, k=5, exclude=[banned, []])
    assert not set(banned) & {r.item_id for r in again[0]}
    assert [r.item_id for r in again[1]] == [r.item_id for r in first[1]]


def test_with_adapters(setup: tuple[Recommender, SemanticIdTable]) -> None:
    model, table = setup
    acfg = AdapterConfig()
    slab = {k: v[None] + 0.3 for k, v in new_adapter(model.cfg, acfg).items()}
    tok, ctx = _prompts(2)
    ad = RowAdapters.gather(acfg, slab, torch.tensor([0, -1]), torch.eye(3)[[0, 0]])
    recs = beam_search(model, table.trie(), tok, ctx, k=5, adapters=ad)
    base = beam_search(model, table.trie(), tok, ctx, k=5)
    assert [r.item_id for r in recs[1]] == [r.item_id for r in base[1]]
    assert [r.score for r in recs[0]] != [r.score for r in base[0]]
