"""The generative recommender shared by edge training and cloud serving (needs torch).

Import it explicitly (``from userlayer.sdk.model import Recommender``); the
``userlayer.sdk`` package itself never imports torch.
"""

from __future__ import annotations

from userlayer.sdk.model.config import LORA_TARGETS, AdapterConfig, ModelConfig, ModelError
from userlayer.sdk.model.decoding import Recommendation, beam_search
from userlayer.sdk.model.io import fingerprint, load_hf_into, load_model, save_model
from userlayer.sdk.model.transformer import (
    BeamCache,
    KVCache,
    Recommender,
    RowAdapters,
    adapter_shapes,
    new_adapter,
)

__all__ = [
    "LORA_TARGETS",
    "AdapterConfig",
    "BeamCache",
    "KVCache",
    "ModelConfig",
    "ModelError",
    "Recommendation",
    "Recommender",
    "RowAdapters",
    "adapter_shapes",
    "beam_search",
    "fingerprint",
    "load_hf_into",
    "load_model",
    "new_adapter",
    "save_model",
]
