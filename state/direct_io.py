"""Durable writes that bypass the page cache (``O_DIRECT``): the bytes go from memory to the
disk once, without a copy into the kernel's cache, and without leaving 70 MB of dirty pages
for the kernel to write back beside the next raw's fsync.

``O_DIRECT`` wants the buffer, the file offset and the length aligned to the device's logical
block (4 KiB covers every device in use). A page-aligned source (:func:`aligned_empty`) is
written as it is; any other is copied through a small page-aligned buffer that stays in the
CPU's cache. The last block is padded and the file truncated to its length before the fsync.
Where the file system refuses ``O_DIRECT`` (tmpfs, some network mounts) the ordinary buffered
write with fsync is used.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from state.durable import fsync_dir, write_chunks

ALIGN = 4096
_BOUNCE = 8 << 20
_local = threading.local()


def aligned_empty(size: int) -> np.ndarray:
    """An uninitialised uint8 array of ``size`` bytes whose buffer starts on a page boundary
    and has room up to the next :data:`ALIGN` multiple (so it can be written with O_DIRECT)."""
    room = max(-(-size // ALIGN) * ALIGN, ALIGN)
    return np.frombuffer(mmap.mmap(-1, room), np.uint8)[:size]


def _aligned(view: memoryview) -> bool:
    address = np.frombuffer(view, np.uint8).ctypes.data if len(view) else 0
    return address % ALIGN == 0


def _bounce() -> memoryview:
    buffer = getattr(_local, "bounce", None)
    if buffer is None:
        buffer = _local.bounce = memoryview(mmap.mmap(-1, _BOUNCE))
    return buffer


def _open_direct(tmp: Path) -> int | None:
    try:
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return None
        raise


def _write_all(fd: int, view: memoryview) -> None:
    while len(view):
        view = view[os.write(fd, view) :]


def write_array_direct(path: Path, data: np.ndarray) -> int:
    """Write the uint8 array ``data`` durably to ``path`` as :func:`write_chunks_direct`
    does; an array from :func:`aligned_empty` goes to the disk without any copy."""
    full = data.base if isinstance(data.base, np.ndarray) else data
    room = -(-len(data) // ALIGN) * ALIGN
    if len(data) and _aligned(memoryview(data)) and len(full) >= room:
        padded = memoryview(np.frombuffer(full, np.uint8)[:room])

        def whole(fd: int) -> int:
            padded[len(data) :] = bytes(room - len(data))
            _write_all(fd, padded)
            return len(data)

        return _commit(path, whole, (memoryview(data),), None)
    return write_chunks_direct(path, (memoryview(data),))


def write_chunks_direct(
    path: Path,
    chunks: Iterable[bytes | bytearray | memoryview],
    before_commit: Callable[[], None] | None = None,
) -> int:
    """Write ``chunks`` to ``path`` as :func:`state.durable.write_chunks` does (temporary file,
    fsync, rename, fsync of the folder; what ``before_commit`` raises leaves nothing behind),
    through a page-aligned buffer and past the page cache. Returns the size. Raises OSError."""
    return _commit(path, lambda fd: _write_bounced(fd, chunks), chunks, before_commit)


def _commit(
    path: Path,
    write: Callable[[int], int],
    chunks: Iterable[bytes | bytearray | memoryview],
    before_commit: Callable[[], None] | None,
) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = _open_direct(tmp)
    if fd is None:
        return write_chunks(path, chunks, before_commit)
    try:
        try:
            size = write(fd)
            os.ftruncate(fd, size)
            if before_commit is not None:
                before_commit()
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    tmp.replace(path)
    fsync_dir(path.parent)
    return size


def _write_bounced(fd: int, chunks: Iterable[bytes | bytearray | memoryview]) -> int:
    bounce = _bounce()
    filled = size = 0
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        while len(view):
            n = min(len(view), _BOUNCE - filled)
            bounce[filled : filled + n] = view[:n]
            filled += n
            size += n
            view = view[n:]
            if filled == _BOUNCE:
                _write_all(fd, bounce)
                filled = 0
    if filled:
        room = -(-filled // ALIGN) * ALIGN
        bounce[filled:room] = bytes(room - filled)
        _write_all(fd, bounce[:room])
    return size
