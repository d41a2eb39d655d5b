"""userlayer.tools: the ``userlayer`` CLI, data tools, Semantic IDs and benchmarks."""

from __future__ import annotations

from userlayer.tools.exceptions import DataFormatError, ToolsError

__all__ = ["DataFormatError", "ToolsError"]
