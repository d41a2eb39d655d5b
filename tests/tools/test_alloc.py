"""Keeping freed memory: a tensor made and freed every step stops faulting fresh pages in."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

CODE = """
import json, resource, sys
import torch
if sys.argv[1] == "keep":
    from userlayer.tools.alloc import keep_freed_memory
    assert keep_freed_memory()
torch.zeros(1)
faults = []
for _ in range(40):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 * 1024 * 1024)  # 64 MiB, above glibc's largest mmap threshold
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""
PAGES = 64 * 1024 * 1024 // 4096


def _faults(mode: str) -> list[int]:
    r = subprocess.run(
        [sys.executable, "-c", CODE, mode], capture_output=True, text=True, timeout=120, check=True
    )
    faults: list[int] = json.loads(r.stdout.splitlines()[-1])
    return faults


def test_freed_blocks_are_reused_instead_of_faulted_in_again() -> None:
    # The median step, not the total: the first steps fault the heap in (2 to 6 steps' pages
    # were seen, depending on the machine), and a shared machine may reclaim pages now and then.
    churn, kept = _faults("plain"), _faults("keep")
    assert statistics.median(churn) > 0.9 * PAGES  # every step touches fresh pages
    assert statistics.median(kept) < 0.05 * PAGES  # the typical step reuses the kept block
