"""The learned critique steer: prefix vectors that only a row with a critique attends to."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from userlayer.sdk.model import RowAdapters
from userlayer.sdk.model.config import ModelConfig, ModelError
from userlayer.sdk.model.steer import STEER_ONLY, CritiqueSteer, SteerConfig, load_steer, save_steer
from userlayer.sdk.model.tokens import CTX
from userlayer.sdk.model.transformer import Recommender

CFG = ModelConfig(level_sizes=(4, 4), d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=48)


def _batch(b: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tok = torch.randint(2, 2 + CFG.n_codes, (b, 7), generator=g)
    tok[:, ::3] = CTX
    tok[0, :3] = 0  # left padding
    return tok, torch.zeros(b, 7, 7, dtype=torch.long)


def _rows(steer: torch.Tensor) -> RowAdapters:
    return RowAdapters(STEER_ONLY, torch.zeros(len(steer), dtype=torch.bool), {}, None, steer)


def test_a_row_without_a_critique_equals_the_base_and_one_with_it_moves() -> None:
    torch.manual_seed(0)
    m = Recommender(CFG).eval()
    tok, ctx = _batch()
    base, _ = m(tok, ctx)
    steer = torch.zeros(3, 2, CFG.d_model)
    steer[1] = torch.randn(2, CFG.d_model)
    got, _ = m(tok, ctx, _rows(steer))
    assert torch.equal(got[0], base[0]) and torch.equal(got[2], base[2])  # bit for bit
    assert (got[1] - base[1]).abs().max() > 1e-3
    with pytest.raises(ModelError, match="steer"):
        m(tok, ctx, _rows(torch.zeros(3, 2, CFG.d_model + 1)))


def test_the_steer_gives_zeros_for_no_text_and_reloads_only_for_its_base(tmp_path: Path) -> None:
    torch.manual_seed(0)
    s = CritiqueSteer(SteerConfig(d_model=32, text_dim=8, n_vectors=3, hidden=16))
    text = torch.zeros(2, 8)
    text[1] = torch.randn(8)
    out = s(text)
    assert out.shape == (2, 3, 32) and not out[0].any() and out[1].abs().sum() > 0
    save_steer(s, tmp_path, "base-a", {"note": 1})
    got = load_steer(tmp_path, "base-a")
    assert got is not None and got[1]["note"] == 1
    torch.testing.assert_close(got[0](text), out, rtol=0, atol=0)
    with pytest.raises(ModelError, match="trained for base base-a"):
        load_steer(tmp_path, "base-b")
    assert load_steer(tmp_path / "none", "base-a") is None
    with pytest.raises(ModelError, match="n_vectors"):
        SteerConfig(d_model=32, n_vectors=0)


def test_the_encoder_reads_one_text_however_written_and_keeps_nothing() -> None:
    pytest.importorskip("navec", reason="the steer's encoder needs navec: userlayer[critique-text]")
    from userlayer.sdk.model.steer import SteerEncoder

    torch.manual_seed(0)
    enc = SteerEncoder(CritiqueSteer(SteerConfig(d_model=32, hidden=16)))
    texts = ["Подешевле", "без мяса", "подешевле ", ""]
    out = enc(texts)
    assert out.shape == (4, 2, 32)
    np.testing.assert_array_equal(out[0], out[2])  # one text, however cased and spaced
    assert not out[3].any()  # no text: zeros, the positions stay off
    with torch.no_grad():
        direct = enc.steer(torch.from_numpy(enc.text_vectors(["без мяса"]))).numpy()
    np.testing.assert_allclose(out[1], direct[0], rtol=0, atol=1e-6)
    assert not [k for k, v in vars(enc).items() if isinstance(v, dict | list)]  # no cache
