"""The peft baseline computes what the engine computes for a LoRA-only user layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from userlayer.cloud.engine.engine import Engine, EngineConfig, EngineRequest
from userlayer.sdk.model import AdapterConfig, new_adapter
from userlayer.sdk.schemas import Context, Mode
from userlayer.tools.bench.naive import NaivePeftServer
from userlayer.tools.exceptions import ToolsError


def test_peft_swap_equals_the_engine_on_lora_only_adapters(tiny_model_dir: Path) -> None:
    acfg = AdapterConfig(rank=2, alpha=4.0, targets=("q", "v", "o", "up"), n_prefix=0)
    acfg = AdapterConfig(**{**acfg.to_dict(), "film": False, "n_modes": 0})
    e = Engine(tiny_model_dir, EngineConfig(backend="torch", slots=4, beam=8), acfg)
    naive = NaivePeftServer(tiny_model_dir, e, acfg)
    items = sorted(e.table.codes)
    reqs = [
        EngineRequest(e.table.services[items[i]], Context(mode=Mode.HEALTH), (items[i],), k=5)
        for i in (0, 7)
    ]
    changed = 0
    for u in range(3):
        g = torch.Generator().manual_seed(u)
        ad = {
            k: (v + 0.3 * torch.randn(v.shape, generator=g)).numpy()
            for k, v in new_adapter(e.model_cfg, acfg, g).items()
        }
        slot = e.slab.load(("u", u), ad)
        ours = e.recommend([EngineRequest(**{**r.__dict__, "slot": slot}) for r in reqs])
        base = e.recommend(reqs)
        for r, o, b in zip(reqs, ours, base, strict=True):
            got = naive.recommend(r, ad)  # swapped in per request
            assert [x.item_id for x in got] == [x.item_id for x in o]
            np.testing.assert_allclose([x.score for x in got], [x.score for x in o], atol=1e-4)
            changed += [x.item_id for x in got] != [x.item_id for x in b]
    assert changed > 0  # the adapters matter, so equality above says something


def test_missing_lora_tensor_is_named(tiny_model_dir: Path) -> None:
    e = Engine(tiny_model_dir, EngineConfig(backend="torch", slots=2))
    naive = NaivePeftServer(tiny_model_dir, e, e.acfg)
    ad = {k: v.numpy() for k, v in new_adapter(e.model_cfg, e.acfg).items()}
    del ad["lora_b.v"]
    with pytest.raises(ToolsError, match="'v'"):
        naive.set_adapter(ad)
