"""Keep freed heap memory in the process for the next CCD instead of returning it to the OS.

glibc serves every allocation over 32 MB (each 4k×4k plane, FFT buffer and temporary of the
CCD chain) with its own ``mmap`` and unmaps it on free, so the next array of the same size
faults in and zeroes all its pages again: half of ``run_ccd``'s CPU on a loaded machine was
the kernel's (``benchmarks/ccd.py``: 504k minor faults, 4.0 system s against 4.8 user s).
With ``mmap`` off and the heap's top trimmed only past ``trim_bytes``, a freed plane is
reused as it is; the process keeps its high-water mark of heap (what the largest CCD needed).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory(trim_bytes: int = 1 << 30) -> bool:
    """Turn glibc's per-allocation ``mmap`` off for this process; False where not glibc."""
    if not sys.platform.startswith("linux") or trim_bytes <= 0:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    trim = min(trim_bytes, 2**31 - 1)
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))
