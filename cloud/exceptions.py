"""Errors of the cloud package (registry, engine, API, Flower server)."""

from __future__ import annotations

from userlayer.sdk.exceptions import UserLayerError

__all__ = ["CloudError"]


class CloudError(UserLayerError):
    """Base of every error raised by userlayer.cloud."""
