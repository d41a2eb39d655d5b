"""``userlayer bench``: measured speed and scale, each beside the alternative a user would pick."""

from __future__ import annotations

from userlayer.tools.bench.report import BenchReport, append_markdown
from userlayer.tools.bench.store import StoreBenchConfig, bench_store

__all__ = ["BenchReport", "StoreBenchConfig", "append_markdown", "bench_store"]
