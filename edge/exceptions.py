"""Errors of the edge package (profile store, aggregation, local training)."""

from __future__ import annotations

from userlayer.sdk.exceptions import UserLayerError

__all__ = [
    "BudgetExceededError",
    "EdgeError",
    "KeyProviderError",
    "ProfileDecryptError",
    "StoreError",
    "TrainingError",
]


class EdgeError(UserLayerError):
    """Base of every error raised by userlayer.edge."""


class KeyProviderError(EdgeError):
    """A key provider cannot do what was asked (missing key file, no rotation...)."""


class ProfileDecryptError(EdgeError):
    """Stored data does not decrypt: tampered, truncated, moved, or the wrong key."""


class StoreError(EdgeError, ValueError):
    """The profile store refused an operation (bad input, wrong file format)."""


class TrainingError(EdgeError, ValueError):
    """Local training cannot run as configured (too little data, bad settings)."""


class BudgetExceededError(TrainingError):
    """Training would take the user past their privacy budget; nothing was changed."""
