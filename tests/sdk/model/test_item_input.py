"""Free input vectors: each history item's own vector, read where its last code is."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from userlayer.sdk.model import load_model, save_model
from userlayer.sdk.model.config import ModelConfig, ModelError
from userlayer.sdk.model.tokens import CTX, PAD, item_tokens
from userlayer.sdk.model.transformer import Recommender

SIZES = (4, 4, 2)
ALL = torch.tensor(list(itertools.product(*(range(s) for s in SIZES))))  # 32 code tuples
# 20 of them, drawn: gaps in the keys, and keys below the smallest and above the largest
CODES = ALL[torch.randperm(32, generator=torch.Generator().manual_seed(7))[:20]]


def _model(**kw: object) -> Recommender:
    torch.manual_seed(0)
    cfg = ModelConfig(
        level_sizes=SIZES, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64,
        max_items=6, n_items=20, item_input=True, **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    m = Recommender(cfg)
    m.set_items(CODES[torch.randperm(20, generator=torch.Generator().manual_seed(1))])
    with torch.no_grad():  # large enough that a leak would show in every logit
        assert m.item_in is not None
        m.item_in.weight.normal_(0, 1.0)
    return m.eval()


def _row(items: list[int], pad: int = 0) -> torch.Tensor:
    return torch.tensor(
        [[PAD] * pad + [t for i in items for t in [CTX, *item_tokens(SIZES, CODES[i].tolist())]]]
    )


def test_the_key_search_finds_every_item_and_misses_the_rest() -> None:
    m = _model()
    keys = (ALL * m.radix).sum(-1)
    assert int(keys.min()) < int(m.item_keys.min()) and int(keys.max()) > int(m.item_keys.max())
    pos = torch.searchsorted(m.item_keys, keys).clamp(max=19)
    want = torch.where(m.item_keys[pos] == keys, pos, -1)  # the reference: searchsorted
    assert torch.equal(m.item_index(ALL), want)
    assert int((want >= 0).sum()) == 20
    assert sorted(m.item_index(CODES).tolist()) == list(range(20))


def test_an_item_vector_sits_only_where_the_whole_item_has_been_read() -> None:
    m = _model()
    tok = torch.cat([_row([3, 7, 11], pad=2), torch.tensor([[CTX]])], 1)
    got = m.item_inputs(tok)[0]
    assert m.item_in is not None
    idx = m.item_index(CODES[[3, 7, 11]])
    ends = [2 + 4 * j + 3 for j in range(3)]  # padding, then [CTX c0 c1 c2] per item
    for t in range(tok.shape[1]):
        want = m.item_in.weight[idx[ends.index(t)]] if t in ends else torch.zeros(32)
        torch.testing.assert_close(got[t], want)
    # a run of codes out of level order, or cut by padding, is not an item
    assert not m.item_inputs(tok[:, 4:])[0, 1].any()  # item 3 without its first code
    assert not m.item_inputs(tok.flip(1))[0].any()


def test_no_position_sees_an_item_before_its_last_code() -> None:
    """Changing an item's vector moves only the positions from its last code on: no leak."""
    m = _model()
    tok = _row([3, 7, 11])
    ctx = torch.zeros(*tok.shape, 7, dtype=torch.long)
    with torch.no_grad():
        before, _ = m(tok, ctx)
        assert m.item_in is not None
        m.item_in.weight[m.item_index(CODES[[7]])] += 3.0
        after, _ = m(tok, ctx)
    last = 4 * 1 + 3  # item 7's last code
    torch.testing.assert_close(after[:, :last], before[:, :last])
    assert (after[:, last:] - before[:, last:]).abs().amax() > 1e-2


def test_training_drops_whole_item_vectors_and_scales_the_rest() -> None:
    m = _model(item_input_drop=0.75).train()
    tok = _row(list(range(20)) * 10)  # 200 items
    torch.manual_seed(3)
    got = m.item_inputs(tok)[0, 3::4]  # at each item's last code
    assert m.item_in is not None
    full = m.item_in.weight[m.item_index(CODES[list(range(20)) * 10])]
    kept = got.abs().sum(-1) > 0
    assert 20 < int(kept.sum()) < 80  # about a quarter of 200
    torch.testing.assert_close(got[kept], full[kept] * 4.0)
    m.eval()
    torch.testing.assert_close(m.item_inputs(tok)[0, 3::4], full)  # no dropout at inference


def test_the_item_inputs_learn_and_are_saved_with_the_model(tmp_path: Path) -> None:
    m = _model().train()
    tok = torch.cat([_row([(r + j) % 20 for j in range(5)]) for r in range(8)])
    ctx = torch.zeros(*tok.shape, 7, dtype=torch.long)
    m.loss(tok, ctx).backward()
    assert m.item_in is not None and m.item_in.weight.grad is not None
    assert m.item_in.weight.grad.abs().sum() > 0
    save_model(m.eval(), tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert again.cfg.item_input and again.cfg.item_input_drop == 0.5
    with torch.no_grad():
        torch.testing.assert_close(again(tok, ctx)[0], m(tok, ctx)[0])


def test_the_config_needs_a_catalog_and_keeps_older_fingerprints() -> None:
    with pytest.raises(ModelError, match="item_input"):
        ModelConfig(level_sizes=SIZES, item_input=True)
    with pytest.raises(ModelError, match="item_input_drop"):
        ModelConfig(level_sizes=SIZES, n_items=4, item_input=True, item_input_drop=1.0)
    plain = ModelConfig(level_sizes=SIZES, n_items=4).to_dict()
    assert "item_input" not in plain and "item_input_drop" not in plain
    assert Recommender(ModelConfig(level_sizes=SIZES, n_items=4)).item_in is None


def test_narrow_item_vectors_are_mapped_up_by_one_shared_matrix() -> None:
    m = _model(item_input_dim=4)
    assert m.item_in is not None and m.item_in_up is not None
    assert tuple(m.item_in.weight.shape) == (20, 4)
    tok = _row([3, 7])
    got = m.item_inputs(tok)[0]
    idx = m.item_index(CODES[[3, 7]])
    torch.testing.assert_close(got[[3, 7]], m.item_in_up(m.item_in.weight[idx]))
    assert not got[[0, 1, 2, 4, 5, 6]].any()
    assert m.cfg.to_dict()["item_input_dim"] == 4
    assert "item_input_dim" not in _model().cfg.to_dict()
    with pytest.raises(ModelError, match="item_input_dim"):
        ModelConfig(level_sizes=SIZES, n_items=4, item_input=True, item_input_dim=-1)
    with pytest.raises(ModelError, match="only with `item_input`"):
        ModelConfig(level_sizes=SIZES, n_items=4, item_input_dim=8)


def test_int32_tokens_find_their_items_too() -> None:
    m = _model()
    tok = _row([3, 7])
    torch.testing.assert_close(m.item_inputs(tok.int()), m.item_inputs(tok))


def test_a_cached_run_equals_the_whole_run_and_refuses_a_split_item() -> None:
    m = _model()
    tok = _row([3, 7, 11])
    ctx = torch.zeros(*tok.shape, 7, dtype=torch.long)
    with torch.no_grad():
        whole, _ = m(tok, ctx)
        _, cache = m(tok[:, :4], ctx[:, :4], return_cache=True)  # the first item, whole
        assert cache is not None
        rest, _ = m(tok[:, 4:], ctx[:, 4:], cache=cache)
        torch.testing.assert_close(rest, whole[:, 4:])
        _, cut = m(tok[:, :6], ctx[:, :6], return_cache=True)  # item 7's first code cached
        assert cut is not None
        with pytest.raises(ModelError, match="run whole items"):
            m(tok[:, 6:], ctx[:, 6:], cache=cut)


def test_tied_inputs_are_the_heads_free_vectors_and_learn_from_the_input_too() -> None:
    """``item_tied``: one vector per item, read at the input and scored by the head."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        level_sizes=SIZES, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64,
        max_items=6, n_items=20, item_input=True, item_tied=True, item_loss=0.0,
    )  # fmt: skip
    m = Recommender(cfg)
    m.set_items(CODES[torch.randperm(20, generator=torch.Generator().manual_seed(1))])
    assert m.item_in is None and m.item_emb is not None  # no table of its own
    with torch.no_grad():
        m.item_emb.weight.normal_(0, 1.0)
    got = m.eval().item_inputs(_row([3, 7]))[0]
    idx = m.item_index(CODES[[3, 7]])
    torch.testing.assert_close(got[[3, 7]], m.item_emb.weight[idx])
    assert not got[[0, 1, 2, 4, 5, 6]].any()
    # without the head's loss (weight 0) the free vectors learn through the input alone
    tok = torch.cat([_row([(r + j) % 20 for j in range(5)]) for r in range(8)])
    ctx = torch.zeros(*tok.shape, 7, dtype=torch.long)
    m.train().loss(tok, ctx).backward()
    assert m.item_emb.weight.grad is not None
    assert m.item_emb.weight.grad[m.item_index(CODES[[3, 7]])].abs().sum() > 0
    assert "item_tied" not in _model().cfg.to_dict() and cfg.to_dict()["item_tied"] is True
    for bad in ({"item_free": False}, {"item_input": False}, {"item_input_dim": 8}):
        kw = {"n_items": 4, "item_input": True, "item_tied": True, **bad}
        with pytest.raises(ModelError, match="item_tied"):
            ModelConfig(level_sizes=SIZES, **kw)  # type: ignore[arg-type]
