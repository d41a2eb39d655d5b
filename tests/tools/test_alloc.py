"""Keeping freed memory: a tensor made and freed every step stops faulting fresh pages in."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import resource, sys
import torch
if sys.argv[1] == "keep":
    from userlayer.tools.alloc import keep_freed_memory
    assert keep_freed_memory()
torch.zeros(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    x = torch.ones(16 * 1024 * 1024)  # 64 MiB, above glibc's largest mmap threshold
    del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    r = subprocess.run(
        [sys.executable, "-c", CODE, mode], capture_output=True, text=True, timeout=120, check=True
    )
    return int(r.stdout.split()[-1])


def test_freed_blocks_are_reused_instead_of_faulted_in_again() -> None:
    churn, kept = _faults("plain"), _faults("keep")
    pages = 64 * 1024 * 1024 // 4096
    assert churn > 30 * pages  # every one of the 40 steps touches fresh pages
    assert kept < 6 * pages  # a few steps' pages (2x-4x measured), then reuse
