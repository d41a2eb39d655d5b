from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from userlayer.sdk.model import (
    ModelConfig,
    ModelError,
    Recommender,
    fingerprint,
    load_model,
    save_model,
)
from userlayer.sdk.model.io import hf_model_config, load_hf_into
from userlayer.sdk.model.transformer import _Ctx

CFG = ModelConfig(
    level_sizes=(8, 4), d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48, dropout=0.0
)


def test_round_trip_and_fingerprint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = Recommender(CFG).eval()
    fp = save_model(m, tmp_path)
    again = load_model(tmp_path)
    assert fingerprint(again) == fp
    for (n, a), (_, b) in zip(m.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    with torch.no_grad():
        m.norm.weight[0] += 1e-3
    assert fingerprint(m) != fp


def test_tampered_weights_or_config_refused(tmp_path: Path) -> None:
    save_model(Recommender(CFG), tmp_path)
    doc = json.loads((tmp_path / "config.json").read_text())
    doc["fingerprint"] = "0" * 16
    (tmp_path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="do not match the recorded fingerprint"):
        load_model(tmp_path)
    doc["model"]["d_model"] = 64
    (tmp_path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="do not fit the config"):
        load_model(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ModelError, match="cannot read weights"):
        load_model(tmp_path)
    with pytest.raises(ModelError, match="cannot load model"):
        load_model(tmp_path / "nowhere")


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_hf_checkpoint_import_matches_hf_forward(tmp_path: Path, kind: str) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = {
        "vocab_size": 50,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 128,
    }
    if kind == "llama":
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    else:
        hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    hf.eval().save_pretrained(tmp_path, safe_serialization=True)
    cfg = hf_model_config(tmp_path, (8, 4), dropout=0.0)
    ours = Recommender(cfg).eval()
    copied = load_hf_into(ours, tmp_path)
    assert len(copied) == 2 * (9 + (3 if kind == "qwen2" else 0)) + 1
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        ref = hf.model(inputs_embeds=x).last_hidden_state
        pos = torch.arange(7)[None].expand(2, 7)
        cos, sin = ours.rope_cos[pos][:, None], ours.rope_sin[pos][:, None]
        mask = torch.ones(7, 7, dtype=torch.bool).tril()[None].expand(2, 7, 7)
        h = x
        for blk in ours.blocks:
            h, _, _ = blk(_Ctx(None), h, None, cos, sin, mask, None, None)
        h = ours.norm(h)
    assert torch.allclose(h, ref, atol=1e-4)


def test_hf_shape_mismatch_and_pickles_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ModelError, match="unsupported model_type 'gpt2'"):
        hf_model_config(tmp_path, (4,))
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelError, match=r"pickled \.bin files are refused"):
        load_hf_into(Recommender(CFG), tmp_path)
