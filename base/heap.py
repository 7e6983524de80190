"""Keep freed heap memory in the process for the next CCD instead of returning it to the OS.

glibc serves every allocation over 32 MB (each 4k×4k plane, FFT buffer and temporary of the
CCD chain) with its own ``mmap`` and unmaps it on free, so the next array of the same size
faults in and zeroes all its pages again: half of ``run_ccd``'s CPU on a loaded machine was
the kernel's (``benchmarks/ccd.py``: 504k minor faults, 4.0 system s against 4.8 user s).
With ``mmap`` off and the heap's top trimmed only past ``trim_bytes``, a freed plane is
reused as it is; the process keeps its high-water mark of heap (what the largest CCD needed).
The bound is the largest ``mallopt`` takes (~2 GB): a 4k×4k CCD frees more than 1 GB at
the heap's top between its stages and at its end, so with a 1 GB bound the heap was trimmed
and the next stage or CCD faulted it in again (``comcam``: 37k–133k minor faults and 0.3–1 s
more CPU a CCD on a loaded machine against ~300 faults with this bound).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
#: Free heap kept at the top before it is returned to the system (``mallopt``'s int maximum).
KEEP_BYTES = 2**31 - 1


def keep_freed_memory(trim_bytes: int = KEEP_BYTES) -> bool:
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
    trim = min(trim_bytes, KEEP_BYTES)
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))
