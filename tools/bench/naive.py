"""The baseline users reach for first: peft, the user's LoRA set per request, one at a time.

One torch copy of the base model wrapped by ``peft.inject_adapter_in_model``
with LoRA on the same projections as the user layer; for each request the
user's LoRA tensors are written into it with ``set_peft_model_state_dict``
and the request is decoded alone (batch 1, the same constrained beam search).
Only the LoRA part of a user layer has a peft equivalent: the prefix, FiLM
and mode components are not applied, so the baseline does less work per
request than the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from userlayer.cloud.engine.engine import Engine, EngineRequest
from userlayer.sdk.model import AdapterConfig, Recommender, load_model
from userlayer.sdk.model.decoding import Recommendation, beam_search
from userlayer.sdk.model.prompt import encode_request, pack_prompts
from userlayer.tools.exceptions import ToolsError

__all__ = ["NaivePeftServer"]

_ATTN, _MLP = ("q", "k", "v", "o"), ("gate", "up", "down")
_MODULES = {**dict.fromkeys(_ATTN, "attn"), **dict.fromkeys(_MLP, "mlp")}


class NaivePeftServer:
    """Per-request adapter swap on one peft-wrapped torch model (see the module docstring).

    Args:
        model_dir: the base model directory.
        engine: an engine on the same model, for its catalog, vocabulary and settings.
        acfg: the user layer whose LoRA part is swapped in.
    """

    def __init__(self, model_dir: str | Path, engine: Engine, acfg: AdapterConfig) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        self.engine = engine
        self.acfg = acfg
        model = load_model(Path(model_dir)).eval()
        n_layers = model.cfg.n_layers
        self.names = {
            t: [f"blocks.{i}.{_MODULES[t]}.{t}" for i in range(n_layers)] for t in acfg.targets
        }
        targets = [n for names in self.names.values() for n in names]
        opts: dict[str, Any] = {"r": acfg.rank, "lora_alpha": acfg.alpha, "lora_dropout": 0.0}
        lcfg = LoraConfig(target_modules=targets, **opts)
        self.model = inject_adapter_in_model(lcfg, model)
        self.model.eval()

    def set_adapter(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Write one user's LoRA tensors into the wrapped model (what a naive server does).

        Raises:
            ToolsError: a LoRA tensor of the user layer is missing.
        """
        from peft import set_peft_model_state_dict

        sd: dict[str, torch.Tensor] = {}
        for t, names in self.names.items():
            if f"lora_a.{t}" not in tensors or f"lora_b.{t}" not in tensors:
                raise ToolsError(f"the adapter has no LoRA tensors for {t!r}")
            a, b = tensors[f"lora_a.{t}"], tensors[f"lora_b.{t}"]
            for i, name in enumerate(names):
                sd[f"{name}.lora_A.weight"] = torch.from_numpy(np.ascontiguousarray(a[i]))
                sd[f"{name}.lora_B.weight"] = torch.from_numpy(np.ascontiguousarray(b[i]))
        set_peft_model_state_dict(self.model, sd)

    @torch.no_grad()
    def recommend(
        self, req: EngineRequest, tensors: Mapping[str, np.ndarray]
    ) -> list[Recommendation]:
        """Swap in the user's adapter and decode this one request."""
        self.set_adapter(tensors)
        e = self.engine
        p = encode_request(
            req.service, req.context, req.session, e.table, e.vocab, e.cfg.max_session_items
        )
        tok, ctx = pack_prompts([(p.tokens, p.ctx)], len(e.vocab.sizes))
        out = beam_search(
            cast(Recommender, self.model),
            e.trie,
            tok,
            ctx,
            k=req.k,
            beam=max(e.cfg.beam, req.k),
            services=[req.service],
            exclude=[req.exclude],
        )
        return out[0]
