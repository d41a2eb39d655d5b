"""Errors of the edge package (profile store, aggregation, local training)."""

from __future__ import annotations

from userlayer.sdk.exceptions import DecryptError, KeyProviderError, UserLayerError

__all__ = [
    "BudgetExceededError",
    "EdgeError",
    "ExplainError",
    "KeyProviderError",
    "ProfileDecryptError",
    "StoreError",
    "TrainingError",
]


class EdgeError(UserLayerError):
    """Base of every error raised by userlayer.edge."""


class ProfileDecryptError(EdgeError, DecryptError):
    """Stored profile data does not decrypt: tampered, truncated, moved, or the wrong key.

    (``KeyProviderError`` is the shared one of ``userlayer.sdk.exceptions``.)
    """


class StoreError(EdgeError, ValueError):
    """The profile store refused an operation (bad input, wrong file format)."""


class TrainingError(EdgeError, ValueError):
    """Local training cannot run as configured (too little data, bad settings)."""


class BudgetExceededError(TrainingError):
    """Training would take the user past their privacy budget; nothing was changed."""


class ExplainError(EdgeError, ValueError):
    """An explanation cannot be made as asked (an unknown item, bad settings)."""
