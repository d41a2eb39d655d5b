"""The dense item head: every catalog item scored where the next item's first code is predicted."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from userlayer.sdk.model import fingerprint, load_model, save_model
from userlayer.sdk.model.config import ModelConfig, ModelError
from userlayer.sdk.model.tokens import CTX, item_key, item_tokens
from userlayer.sdk.model.transformer import Recommender

SIZES = (4, 4, 2)
CODES = torch.tensor(list(itertools.product(*(range(s) for s in SIZES)))[:20])


def _model(**kw: object) -> Recommender:
    torch.manual_seed(0)
    cfg = ModelConfig(
        level_sizes=SIZES, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64,
        max_items=6, n_items=20, **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    m = Recommender(cfg)
    m.set_items(CODES[torch.randperm(20, generator=torch.Generator().manual_seed(1))])
    return m


def _rows() -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """8 sequences of 5 items walking the catalog; the next item of row r is r + 4 (mod 20)."""
    toks = []
    for r in range(8):
        toks.append(
            [t for j in range(5) for t in [CTX, *item_tokens(SIZES, CODES[(r + j) % 20].tolist())]]
        )
    tok = torch.tensor(toks)
    return tok, torch.zeros(*tok.shape, 7, dtype=torch.long), [(r + 4) % 20 for r in range(8)]


def test_items_are_kept_in_semantic_id_order_and_found_by_their_codes() -> None:
    m = _model()
    keys = [item_key(SIZES, c) for c in CODES.tolist()]
    assert m.item_keys.tolist() == sorted(keys)
    assert m.item_index(CODES[[3, 0, 19]]).tolist() == [3, 0, 19]
    assert m.item_index(torch.tensor([[3, 3, 1]])).tolist() == [-1]  # no such item
    with pytest.raises(ModelError, match="share a Semantic ID"):
        m.set_items(torch.cat([CODES[:19], CODES[:1]]))
    with pytest.raises(ModelError, match="out of"):
        m.set_items(CODES + 4)
    with pytest.raises(ModelError, match=r"\(20, 3\)"):
        m.set_items(CODES[:5])


def test_the_head_learns_the_next_item_and_ranks_it_first() -> None:
    m = _model()
    tok, ctx, nxt = _rows()
    prompt_tok, prompt_ctx = tok[:, : 4 * 4 + 1], ctx[:, : 4 * 4 + 1]  # 4 items, then CTX
    before = m.loss(tok, ctx).item()
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        m.loss(tok, ctx).backward()
        opt.step()
    assert m.loss(tok, ctx).item() < 0.3 * before
    assert m.item_emb is not None and m.item_emb.weight.grad is not None
    m.eval()
    scores = m.item_logits(prompt_tok, prompt_ctx)
    assert scores.shape == (8, 20)
    want = m.item_index(CODES[nxt])
    assert scores.argmax(1).tolist() == want.tolist()


def test_the_item_loss_adds_to_the_codes_loss_only_when_weighted() -> None:
    tok, ctx, _ = _rows()
    with_head = _model().loss(tok, ctx)
    without = _model(item_loss=0.0).loss(tok, ctx)  # the same weights, the head not counted
    assert with_head.item() > without.item() + 1.0  # log(20) per item start, over the codes
    with pytest.raises(ModelError, match="item_loss"):
        ModelConfig(level_sizes=SIZES, n_items=3, item_loss=-1.0)


def test_a_model_without_a_head_refuses_dense_scores_and_keeps_its_config() -> None:
    cfg = ModelConfig(level_sizes=SIZES, d_model=32, n_heads=2, n_kv_heads=1)
    assert "n_items" not in cfg.to_dict()  # fingerprints of older models stay valid
    m = Recommender(cfg)
    tok, ctx, _ = _rows()
    with pytest.raises(ModelError, match="no dense item head"):
        m.item_logits(tok, ctx)
    with pytest.raises(ModelError):
        m.set_items(CODES)


def test_the_head_and_its_catalog_are_saved_with_the_model(tmp_path: Path) -> None:
    m = _model()
    save_model(m, tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert again.cfg.n_items == 20
    assert torch.equal(again.item_codes, m.item_codes)
    tok, ctx, _ = _rows()
    m.eval()
    torch.testing.assert_close(again.item_logits(tok, ctx), m.item_logits(tok, ctx))


def test_a_head_without_free_vectors_adds_no_parameter_and_still_learns() -> None:
    plain = Recommender(ModelConfig(**{**_model().cfg.to_dict(), "n_items": 0}))
    m = _model(item_free=False)
    assert m.item_emb is None
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in plain.parameters())
    assert m.cfg.to_dict()["item_free"] is False  # kept in the config, so a reload matches
    assert "item_free" not in _model().cfg.to_dict()  # older head models keep their fingerprint
    tok, ctx, nxt = _rows()
    before = m.loss(tok, ctx).item()
    assert before > _model(item_free=False, item_loss=0.0).loss(tok, ctx).item()  # head counted
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        m.loss(tok, ctx).backward()
        opt.step()
    m.eval()
    scores = m.item_logits(tok[:, : 4 * 4 + 1], ctx[:, : 4 * 4 + 1])
    assert scores.argmax(1).tolist() == m.item_index(CODES[nxt]).tolist()


def test_a_base_without_a_head_saves_no_head_buffers_so_older_models_load(tmp_path: Path) -> None:
    """Models saved before the head existed lack its buffers; they must load, same fingerprint."""
    cfg = ModelConfig(level_sizes=SIZES, d_model=32, n_heads=2, n_kv_heads=1)
    m = Recommender(cfg)
    assert not {"item_codes", "item_keys"} & set(m.state_dict())
    save_model(m, tmp_path / "m")
    assert fingerprint(load_model(tmp_path / "m")) == fingerprint(m)
    assert {"item_codes", "item_keys"} <= set(_model().state_dict())  # a head keeps its catalog


def test_label_smoothing_of_the_items_loss_spreads_over_every_item() -> None:
    """The head's part of the smoothed loss, by hand: (1 - e) CE + e * mean of -log p."""
    tok, ctx, _ = _rows()
    m, codes_only = _model().eval(), _model(item_loss=0.0).eval()  # the same weights
    eps = 0.3
    with torch.no_grad():
        got = m.loss(tok, ctx, reduction="sum", label_smoothing=eps) - codes_only.loss(
            tok, ctx, reduction="sum", label_smoothing=eps
        )
        h, _, _ = m.run(tok, ctx)
    want = torch.zeros(())
    for r in range(tok.shape[0]):
        for j in range(5):  # each item of the row is predicted from its CTX position
            t = 4 * j
            nxt = m.item_index(CODES[(r + j) % 20][None])[0]
            logp = m.item_scores(h[r, t]).log_softmax(-1)
            want = want - (1 - eps) * logp[nxt] - eps * logp.mean()
    torch.testing.assert_close(got, want)
