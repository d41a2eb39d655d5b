"""Event data: the dataset format, the three-service simulator and public-format loaders."""

from __future__ import annotations

from userlayer.tools.data.format import (
    DATASET_FORMAT,
    EVENT_SCHEMA,
    ITEM_SCHEMA,
    Dataset,
    build_events,
    validate_events,
    validate_items,
)
from userlayer.tools.data.synth import SynthConfig, SynthResult, UserTaste, synthesize

__all__ = [
    "DATASET_FORMAT",
    "EVENT_SCHEMA",
    "ITEM_SCHEMA",
    "Dataset",
    "SynthConfig",
    "SynthResult",
    "UserTaste",
    "build_events",
    "synthesize",
    "validate_events",
    "validate_items",
]
