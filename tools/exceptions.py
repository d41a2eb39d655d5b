"""Errors of the tools package (data, Semantic IDs, CLI)."""

from __future__ import annotations

from userlayer.sdk.exceptions import UserLayerError

__all__ = ["DataFormatError", "ToolsError"]


class ToolsError(UserLayerError):
    """Base of every error raised by userlayer.tools."""


class DataFormatError(ToolsError, ValueError):
    """Input data is malformed; the message names the file, line or column."""
