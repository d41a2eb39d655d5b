"""Benchmark reports: JSON plus a markdown table appended to ``docs/benchmarks.md``."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["BenchReport", "append_markdown", "machine"]


def machine() -> str:
    """A one-line description of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


@dataclass
class BenchReport:
    """One benchmark run: what was measured, how, and the rows of its table."""

    name: str
    command: str
    columns: list[str]
    rows: list[list[Any]]
    results: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    date: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
    machine: str = field(default_factory=machine)
    commit: str = field(default_factory=_commit)

    def to_json(self) -> str:
        """The report as JSON."""
        return json.dumps(self.__dict__, indent=2, default=str)

    def markdown(self) -> str:
        """A markdown section: header line, table, notes."""
        head = f"### {self.name} ({self.date})\n\n"
        head += f"`{self.command}` on {self.machine}, commit {self.commit}\n\n"
        table = "| " + " | ".join(self.columns) + " |\n"
        table += "|" + "---|" * len(self.columns) + "\n"
        for r in self.rows:
            table += "| " + " | ".join(_fmt(v) for v in r) + " |\n"
        notes = "".join(f"\n- {n}" for n in self.notes)
        return head + table + notes + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def append_markdown(report: BenchReport, path: str | Path) -> None:
    """Append the report's section to a markdown file (created with a title if missing)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if not p.exists():
        p.write_text("# Benchmarks\n\nEvery figure here was appended by `userlayer bench`.\n\n")
    with p.open("a", encoding="utf-8") as f:
        f.write("\n" + report.markdown())
