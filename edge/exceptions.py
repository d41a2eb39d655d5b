"""Errors of the edge package (profile store, aggregation, local training)."""

from __future__ import annotations

from userlayer.sdk.exceptions import UserLayerError

__all__ = ["EdgeError"]


class EdgeError(UserLayerError):
    """Base of every error raised by userlayer.edge."""
