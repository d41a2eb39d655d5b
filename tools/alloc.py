"""Keep freed memory in the process: no page-fault storm from large tensors made every step.

glibc's ``malloc`` serves blocks above its mmap threshold (at most 32 MiB) with
fresh ``mmap`` pages and returns them on ``free``; the kernel then zeroes
every page again at its first touch. A training step that makes and frees a
few hundred MiB of logits (the SASRec baseline's full softmax over a large
catalog) then spends much of its time in the kernel
(``experiments/alloc_churn.py`` measures it). Raising the mmap and trim
thresholds keeps such blocks in the heap for reuse: the process keeps its
peak memory instead of returning it. Only glibc is changed; elsewhere this
does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["keep_freed_memory"]

logger = logging.getLogger(__name__)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_ONE_GIB = 1 << 30


def keep_freed_memory(threshold: int = _ONE_GIB) -> bool:
    """Serve blocks up to ``threshold`` bytes from the heap and keep freed memory; True if set."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 2 * threshold)
    )
    if not ok:
        logger.debug("mallopt refused the thresholds; memory is returned as before")
    return ok
