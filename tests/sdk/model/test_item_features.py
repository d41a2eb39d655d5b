"""Fixed item features: each item's given vector, read into the input and the head's output."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from userlayer.sdk.model import load_model, save_model
from userlayer.sdk.model.config import ModelConfig, ModelError
from userlayer.sdk.model.tokens import CTX, item_tokens
from userlayer.sdk.model.transformer import Recommender

SIZES = (4, 4, 2)
ALL = torch.tensor(list(itertools.product(*(range(s) for s in SIZES))))
CODES = ALL[torch.randperm(32, generator=torch.Generator().manual_seed(7))[:20]]
FEATS = torch.randn(20, 6, generator=torch.Generator().manual_seed(2))


def _model(**kw: object) -> Recommender:
    torch.manual_seed(0)
    cfg = ModelConfig(
        level_sizes=SIZES, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64,
        max_items=6, n_items=20, item_free=False, item_features=6, **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    m = Recommender(cfg)
    m.set_items(CODES, FEATS)
    with torch.no_grad():  # large enough that a leak would show in every logit
        assert m.feat_in is not None and m.feat_out is not None
        m.feat_in.weight.normal_(0, 1.0)
        m.feat_out.weight.normal_(0, 1.0)
    return m.eval()


def _row(items: list[int]) -> torch.Tensor:
    return torch.tensor([[t for i in items for t in [CTX, *item_tokens(SIZES, CODES[i].tolist())]]])


def test_features_sit_where_the_whole_item_has_been_read_in_head_order() -> None:
    m = _model()
    assert m.feat_in is not None
    got = m.item_inputs(_row([3, 7]))[0]
    torch.testing.assert_close(got[3], m.feat_in(FEATS[3]))  # the row given with item 3's codes
    torch.testing.assert_close(got[7], m.feat_in(FEATS[7]))
    assert not got[[0, 1, 2, 4, 5, 6]].any()


def test_no_position_sees_an_items_features_before_its_last_code() -> None:
    m = _model()
    tok = _row([3, 7, 11])
    ctx = torch.zeros(*tok.shape, 7, dtype=torch.long)
    with torch.no_grad():
        before, _ = m(tok, ctx)
        m.item_feats[m.item_index(CODES[[7]])] += 3.0
        after, _ = m(tok, ctx)
    last = 4 * 1 + 3  # item 7's last code
    torch.testing.assert_close(after[:, :last], before[:, :last])
    assert (after[:, last:] - before[:, last:]).abs().amax() > 1e-2


def test_the_head_adds_each_items_mapped_features_to_its_output_vector() -> None:
    m = _model()
    assert m.feat_out is not None
    with torch.no_grad():
        vec = m.item_vectors()
        idx = int(m.item_index(CODES[[5]])[0])
        m.item_feats[idx] += 1.0
        moved = (m.item_vectors() - vec).abs().sum(-1)
    assert moved[idx] > 0 and int((moved > 0).sum()) == 1
    torch.testing.assert_close(moved[idx], m.feat_out.weight.sum(1).abs().sum())


def test_features_are_fixed_their_maps_learn_and_all_is_saved(tmp_path: Path) -> None:
    m = _model().train()
    tok = torch.cat([_row([(r + j) % 20 for j in range(5)]) for r in range(8)])
    ctx = torch.zeros(*tok.shape, 7, dtype=torch.long)
    m.loss(tok, ctx).backward()
    assert m.feat_in is not None and m.feat_out is not None
    assert m.feat_in.weight.grad is not None and m.feat_in.weight.grad.abs().sum() > 0
    assert m.feat_out.weight.grad is not None and m.feat_out.weight.grad.abs().sum() > 0
    assert "item_feats" not in dict(m.named_parameters())
    save_model(m.eval(), tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert again.cfg.item_features == 6
    torch.testing.assert_close(again.item_feats, m.item_feats)
    with torch.no_grad():
        torch.testing.assert_close(again(tok, ctx)[0], m(tok, ctx)[0])


def test_features_come_with_the_codes_exactly_when_the_model_reads_them() -> None:
    m = Recommender(ModelConfig(level_sizes=SIZES, n_items=20, item_features=6))
    with pytest.raises(ModelError, match="reads 6 item features"):
        m.set_items(CODES)
    with pytest.raises(ModelError, match=r"\(20, 6\)"):
        m.set_items(CODES, FEATS[:, :5])
    with pytest.raises(ModelError, match="finite"):
        m.set_items(CODES, FEATS.clone().fill_(float("nan")))
    plain = Recommender(ModelConfig(level_sizes=SIZES, n_items=20))
    with pytest.raises(ModelError, match="reads no item features"):
        plain.set_items(CODES, FEATS)


def test_the_config_needs_a_catalog_and_keeps_older_fingerprints() -> None:
    with pytest.raises(ModelError, match="item_features"):
        ModelConfig(level_sizes=SIZES, item_features=4)
    with pytest.raises(ModelError, match="item_features"):
        ModelConfig(level_sizes=SIZES, n_items=4, item_features=-1)
    with_feats = _model().cfg
    plain = ModelConfig(**{**with_feats.to_dict(), "item_features": 0})
    assert "item_features" not in plain.to_dict()  # the dict the fingerprint hashes
    assert {**plain.to_dict(), "item_features": 6} == with_feats.to_dict()
    m = Recommender(plain)
    # a head's state dict as before features existed: no buffer, no map
    assert sorted(m.state_dict()) == sorted(
        k for k in _model().state_dict() if not k.startswith(("feat_", "item_feats"))
    )
    assert not any(k.startswith(("feat_", "item_feats")) for k in m.state_dict())
    assert m.feat_in is None and m.feat_out is None


def test_features_and_free_input_vectors_add_up() -> None:
    m = _model(item_input=True)
    assert m.item_in is not None and m.feat_in is not None
    idx = m.item_index(CODES[[3]])
    got = m.item_inputs(_row([3]))[0, 3]
    torch.testing.assert_close(got, m.item_in.weight[idx[0]] + m.feat_in(FEATS[3]))
