"""Shared fixtures of the decoding tests: a small random table and model."""

from __future__ import annotations

import pytest
import torch

from userlayer.sdk import SemanticIdTable, Service
from userlayer.sdk.model import ModelConfig, Recommender


def _table() -> SemanticIdTable:
    g = torch.Generator().manual_seed(0)
    codes, services = {}, {}
    svc = list(Service)
    while len(codes) < 60:
        c = tuple(int(x) for x in torch.randint(0, 6, (3,), generator=g))
        if c not in codes.values():
            item = f"i{len(codes)}"
            codes[item] = c
            services[item] = svc[len(codes) % 3]
    return SemanticIdTable(codes=codes, services=services, level_sizes=(6, 6, 6))


@pytest.fixture(scope="module")
def setup() -> tuple[Recommender, SemanticIdTable]:
    torch.manual_seed(0)
    table = _table()
    cfg = ModelConfig(
        level_sizes=table.level_sizes, d_model=32, n_heads=4, n_kv_heads=2, d_ff=48, dropout=0.0
    )
    return Recommender(cfg).eval(), table
