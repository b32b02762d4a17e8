"""Keep freed memory in the process heap while the fast engine plans in batches.

The fast engine counts the traffic of millions of sessions at a time in numpy arrays of tens of
megabytes, and frees them after each batch. glibc hands blocks that large back to the kernel (they
are mapped on their own, and the heap's free top is trimmed), so the next batch's arrays are fresh
pages the kernel must fault in and zero again: on a 100,000-SIM scenario that costs about a tenth
of the simulating time. Raising the two thresholds keeps such blocks in the heap for reuse.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Final

M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3
MMAP_THRESHOLD_BYTES: Final = 32 * 1024 * 1024
"""glibc's largest allowed threshold: blocks up to this size come from the heap."""
TRIM_THRESHOLD_BYTES: Final = 256 * 1024 * 1024
"""Free memory at the heap's top kept for reuse before it is returned to the kernel."""


def keep_freed_blocks() -> bool:
    """Ask glibc to keep large freed blocks for reuse; return whether it could (Linux with glibc only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
