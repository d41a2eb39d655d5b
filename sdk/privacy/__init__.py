"""Differential privacy shared by the edge and the cloud: OS randomness and accounting.

Needs numpy, and Opacus for accounting (the ``[edge]`` or ``[cloud]`` extra);
``import userlayer.sdk`` does not import this package.
"""

from __future__ import annotations

from userlayer.sdk.privacy.accounting import (
    ACCOUNTANTS,
    DEFAULT_ACCOUNTANT,
    RDP_ORDERS,
    Mechanism,
    epsilon,
    library,
    noise_multiplier,
)
from userlayer.sdk.privacy.rng import OS_SOURCE, DPRandom, SecureRandom, SeededRandom, dp_random
from userlayer.sdk.privacy.sampling import node_probability, sample_given_selected

__all__ = [
    "ACCOUNTANTS",
    "DEFAULT_ACCOUNTANT",
    "OS_SOURCE",
    "RDP_ORDERS",
    "DPRandom",
    "Mechanism",
    "SecureRandom",
    "SeededRandom",
    "dp_random",
    "epsilon",
    "library",
    "node_probability",
    "noise_multiplier",
    "sample_given_selected",
]
