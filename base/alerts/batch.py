"""One CCD's alert packets in one buffer: assembled by a numba gather, read as slices.

An alert body is a fixed sequence of 26 segments (frame header, diaSourceId, the optional
strings, its DIASource, the union bytes and counts around its previous sources, forced sources,
DIAObject, SSSource, and three cutouts), each a slice of one of a few encoded buffers.
:func:`assemble` copies them once into a buffer that large batches take from transparent huge
pages: a 40k-alert visit is ~3 GB, and 4 KiB pages would cost ~800k page faults, which on a
busy host took longer than the encoding itself.
"""

from __future__ import annotations

import itertools
import mmap
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numba
import numpy as np
from numba.typed import List as TypedList

#: Batches from this size on are allocated from an anonymous mapping advised for huge pages.
HUGE_FROM = 4 << 20
N_SEGMENTS = 26
#: sys.getrefcount of a pooled buffer nobody uses: the pool's list, the loop variable, the call.
_POOLED_REFS = 3
_READONLY_BYTES = numba.types.Array(numba.types.uint8, 1, "C", readonly=True)


def split_packets(data: np.ndarray, offsets: np.ndarray) -> list[memoryview]:
    """Packet k is ``data[offsets[k]:offsets[k + 1]]``, as a view (nothing copied)."""
    view = memoryview(data)
    return [view[a:b] for a, b in itertools.pairwise(offsets.tolist())]


@dataclass(frozen=True)
class AlertBatch:
    """Framed packets of one CCD: packet k is ``data[offsets[k]:offsets[k + 1]]``."""

    ids: np.ndarray  # diaSourceId per packet
    offsets: np.ndarray  # int64, n + 1
    data: np.ndarray  # uint8

    def __len__(self) -> int:
        return len(self.ids)

    def packet(self, k: int) -> memoryview:
        return memoryview(self.data)[self.offsets[k] : self.offsets[k + 1]]

    def __iter__(self) -> Iterator[memoryview]:
        return iter(self.packets())

    def packets(self) -> list[memoryview]:
        return split_packets(self.data, self.offsets)

    @property
    def nbytes(self) -> int:
        return int(self.offsets[-1])


class BufferPool:
    """Reusable packet buffers, so a long-running publisher does not fault in ~3 GB of fresh
    pages per visit. A buffer is handed out again only when nothing refers to it any more:
    every packet (a memoryview) keeps its batch's array, and so the pooled buffer, referenced.
    """

    def __init__(self, capacity_bytes: int = 8 << 30, granule: int = 4 << 20) -> None:
        self.capacity_bytes = capacity_bytes
        self.granule = granule
        self._buffers: list[np.ndarray] = []
        self.reused = 0
        self.allocated = 0

    @property
    def pooled_bytes(self) -> int:
        return sum(b.nbytes for b in self._buffers)

    def get(self, nbytes: int) -> np.ndarray:
        free = [
            b for b in self._buffers if b.nbytes >= nbytes and sys.getrefcount(b) <= _POOLED_REFS
        ]
        if free:
            self.reused += 1
            return min(free, key=lambda b: b.nbytes)[:nbytes]
        size = -(-nbytes // self.granule) * self.granule
        buf = allocate(size)
        self.allocated += 1
        if self.pooled_bytes + size <= self.capacity_bytes:
            self._buffers.append(buf)
        return buf[:nbytes]


def allocate(nbytes: int) -> np.ndarray:
    """A uint8 buffer; large ones from huge pages where the kernel offers them."""
    if nbytes < HUGE_FROM:
        return np.empty(nbytes, dtype=np.uint8)
    region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        region.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(region, dtype=np.uint8)


@numba.njit(cache=True, nogil=True)
def _gather(
    arrays: TypedList,
    which: np.ndarray,
    start: np.ndarray,
    length: np.ndarray,
    offsets: np.ndarray,
    out: np.ndarray,
) -> None:
    n, s_count = start.shape
    for k in range(n):
        pos = offsets[k]
        for s in range(s_count):
            size = length[k, s]
            if size > 0:
                src = arrays[which[s]]
                a = start[k, s]
                out[pos : pos + size] = src[a : a + size]
                pos += size


def assemble(
    ids: np.ndarray,
    arrays: Sequence[np.ndarray],
    which: Sequence[int],
    start: np.ndarray,
    length: np.ndarray,
    pool: BufferPool | None = None,
) -> AlertBatch:
    """Gather segment ``s`` of packet ``k``: ``arrays[which[s]][start[k, s]:][:length[k, s]]``."""
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(length.sum(axis=1), out=offsets[1:])
    total = int(offsets[-1])
    out = pool.get(total) if pool is not None else allocate(total)
    typed = TypedList.empty_list(_READONLY_BYTES)
    for a in arrays:
        typed.append(np.ascontiguousarray(a, dtype=np.uint8).reshape(-1))
    _gather(typed, np.asarray(which, dtype=np.int64), start, length, offsets, out)
    return AlertBatch(np.asarray(ids, dtype=np.int64), offsets, out)
