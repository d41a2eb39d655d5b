"""Shared fixtures: the shared data folder, a small synthetic dataset, a tiny base model."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pg import postgres  # a real PostgreSQL server (registry and profile store)
from userlayer.tools.data.synth import SynthConfig, SynthResult, synthesize

__all__ = ["postgres"]

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def beauty_dir() -> Path:
    d = SHARED / "data" / "amazon-beauty"
    if not (d / "inter.json").exists():
        pytest.skip(f"Amazon Beauty data not found at {d} (../shared is absent)")
    return d


@pytest.fixture(scope="session")
def small_synth() -> SynthResult:
    """60 users over 120 days: big enough to exercise every mechanism, fast."""
    return synthesize(SynthConfig(users=60, seed=7, days=120, events_per_user=60))


TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "d_ff": 48, "max_items": 8}


@pytest.fixture(scope="session")
def synth_data_dir(tmp_path_factory: pytest.TempPathFactory, small_synth: SynthResult) -> Path:
    """``small_synth`` saved with collaborative Semantic IDs (16 codes per level)."""
    from userlayer.tools.sids import SidConfig, build_semantic_ids

    d = tmp_path_factory.mktemp("synth")
    small_synth.save(d)
    table, _ = build_semantic_ids(
        small_synth.dataset, SidConfig(codebook_size=16, embedding="collaborative")
    )
    table.save(d / "sids.json")
    return d


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, synth_data_dir: Path) -> Path:
    """A tiny base pretrained for one epoch on ``synth_data_dir`` (read-only for tests)."""
    from userlayer.tools.train.pretrain import PretrainConfig, pretrain

    out = tmp_path_factory.mktemp("tiny") / "m"
    pretrain(synth_data_dir, out, PretrainConfig(epochs=1, batch_size=32, model=TINY))
    return out


@pytest.fixture(scope="session")
def tiny_head_model_dir(tmp_path_factory: pytest.TempPathFactory, synth_data_dir: Path) -> Path:
    """``tiny_model_dir``'s base with a dense item head, exported (read-only for tests)."""
    from userlayer.cloud.engine.export import export_onnx
    from userlayer.tools.train.pretrain import PretrainConfig, pretrain

    out = tmp_path_factory.mktemp("tiny_head") / "m"
    cfg = PretrainConfig(epochs=1, batch_size=32, model=TINY, item_head=True)
    pretrain(synth_data_dir, out, cfg)
    export_onnx(out, out / "onnx")
    return out
