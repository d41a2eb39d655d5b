"""Shared fixtures: the shared data folder and a small synthetic dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from userlayer.tools.data.synth import SynthConfig, SynthResult, synthesize

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
