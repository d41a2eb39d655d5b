"""Save, load and fingerprint the base model; import a local HF Llama/Qwen2 checkpoint.

A model directory holds ``model.safetensors`` (weights), ``config.json``
(``{"format": "userlayer.model/1", "model": ModelConfig, "fingerprint": ...}``)
and ``sids.json`` (the Semantic IDs the model's vocabulary was built for).
Nothing is unpickled and nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from userlayer.sdk.model.config import ModelConfig, ModelError
from userlayer.sdk.model.transformer import Recommender

__all__ = [
    "MODEL_FORMAT",
    "RANKING_KEY",
    "fingerprint",
    "load_hf_into",
    "load_model",
    "preferred_ranking",
    "save_model",
]

MODEL_FORMAT = "userlayer.model/1"


def fingerprint(model: Recommender) -> str:
    """SHA-256 over the config and every weight (name, dtype, shape, bytes), hex, 16 chars."""
    h = hashlib.sha256(json.dumps(model.cfg.to_dict(), sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


RANKING_KEY = "ranking"  # config.json: the ranking pretraining validated best (a dense head)


def preferred_ranking(directory: str | Path) -> str | None:
    """The ranking recorded in a model directory's config by pretraining, or None.

    A base with a dense item head records which of beam, dense, beam+dense
    (and, since 2026-12-04, fused) ranked its validation users best; older
    models record none.
    """
    try:
        doc = json.loads((Path(directory) / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    got = doc.get(RANKING_KEY) if isinstance(doc, dict) else None
    pref = got.get("preferred") if isinstance(got, dict) else None
    return pref if isinstance(pref, str) else None


def save_model(
    model: Recommender, directory: str | Path, extra: dict[str, Any] | None = None
) -> str:
    """Write weights and config; returns the fingerprint."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(d / "model.safetensors"))
    fp = fingerprint(model)
    doc = {"format": MODEL_FORMAT, "model": model.cfg.to_dict(), "fingerprint": fp, **(extra or {})}
    (d / "config.json").write_text(json.dumps(doc, indent=2), "utf-8")
    return fp


def load_model(directory: str | Path, verify: bool = True) -> Recommender:
    """Load a model directory (eval mode).

    Raises:
        ModelError: missing files, wrong format, mismatched tensors, or a
            fingerprint that does not match the weights.
    """
    d = Path(directory)
    try:
        doc = json.loads((d / "config.json").read_text("utf-8"))
        state = load_file(str(d / "model.safetensors"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot load model from {d}: {e}") from e
    except Exception as e:  # safetensors raises its own error types on corrupt files
        raise ModelError(f"cannot read weights in {d}: {e}") from e
    if doc.get("format") != MODEL_FORMAT:
        raise ModelError(
            f"{d}/config.json: format {doc.get('format')!r}, expected {MODEL_FORMAT!r}"
        )
    model = Recommender(ModelConfig.from_dict(doc["model"]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"weights in {d} do not fit the config: {e}") from e
    if verify and fingerprint(model) != doc.get("fingerprint"):
        raise ModelError(f"{d}: weights do not match the recorded fingerprint")
    return model.eval()


_HF_MAP = {
    "self_attn.q_proj": "attn.q",
    "self_attn.k_proj": "attn.k",
    "self_attn.v_proj": "attn.v",
    "self_attn.o_proj": "attn.o",
    "mlp.gate_proj": "mlp.gate",
    "mlp.up_proj": "mlp.up",
    "mlp.down_proj": "mlp.down",
    "input_layernorm": "norm1",
    "post_attention_layernorm": "norm2",
}


def hf_model_config(
    hf_dir: str | Path, level_sizes: tuple[int, ...], **overrides: Any
) -> ModelConfig:
    """A :class:`ModelConfig` whose transformer shapes match a local HF Llama/Qwen2 config.

    Raises:
        ModelError: unreadable config or an unsupported architecture.
    """
    try:
        hf = json.loads((Path(hf_dir) / "config.json").read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read {hf_dir}/config.json: {e}") from e
    kind = hf.get("model_type")
    if kind not in ("llama", "qwen2"):
        raise ModelError(f"unsupported model_type {kind!r}; supported: llama, qwen2")
    return ModelConfig(
        level_sizes=level_sizes,
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        n_kv_heads=hf.get("num_key_value_heads", hf["num_attention_heads"]),
        d_ff=hf["intermediate_size"],
        rope_theta=float(hf.get("rope_theta", 10_000.0)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        attn_bias=kind == "qwen2",
        **overrides,
    )


def load_hf_into(model: Recommender, hf_dir: str | Path) -> list[str]:
    """Copy the transformer blocks and final norm of a local HF checkpoint into ``model``.

    Token embeddings are not copied (the item-code vocabulary is our own).
    Returns the names of the copied tensors.

    Raises:
        ModelError: no safetensors weights, or a tensor whose shape does not fit.
    """
    files = sorted(Path(hf_dir).glob("*.safetensors"))
    if not files:
        raise ModelError(f"{hf_dir}: no *.safetensors weights (pickled .bin files are refused)")
    ours = model.state_dict()
    copied: dict[str, torch.Tensor] = {}
    for f in files:
        for name, t in load_file(str(f)).items():
            if not name.startswith("model."):
                continue
            rest = name[len("model.") :]
            if rest == "norm.weight":
                target = "norm.weight"
            elif rest.startswith("layers."):
                _, idx, *mod = rest.split(".")
                key = ".".join(mod[:-1])
                if key not in _HF_MAP:
                    continue
                target = f"blocks.{idx}.{_HF_MAP[key]}.{mod[-1]}"
            else:
                continue
            if target not in ours:
                raise ModelError(f"{name}: no matching tensor {target!r} in the model")
            if tuple(ours[target].shape) != tuple(t.shape):
                raise ModelError(
                    f"{name}: shape {tuple(t.shape)} does not fit {target} "
                    f"{tuple(ours[target].shape)}"
                )
            copied[target] = t.to(ours[target].dtype)
    model.load_state_dict(copied, strict=False)
    return sorted(copied)
