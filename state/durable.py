"""Durable files: a component acknowledges data only after it is safely on disk."""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

_CHUNK = 4 << 20


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def read_hashed(
    path: Path, empty: Callable[[int], np.ndarray] | None = None
) -> tuple[np.ndarray, str]:
    """The bytes of ``path`` (a uint8 array) and their sha256, hashed chunk by chunk as they
    are read (each chunk is still in the CPU's cache), so a raw costs one pass instead of a
    read and a hash. The array is not zero-filled first: the read is its only write.

    ``empty(size)`` allocates the array (e.g. page-aligned, for a write past the page cache).
    Raises OSError; callers map it to their own error.
    """
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        data = np.empty(size, np.uint8) if empty is None else empty(size)
        view = memoryview(data)
        size = 0
        while size < len(data):
            n = f.readinto(view[size : size + _CHUNK])
            if not n:
                break
            digest.update(view[size : size + n])
            size += n
        data = data[:size]
        more = []
        while chunk := f.read(_CHUNK):  # the file grew since fstat
            digest.update(chunk)
            more.append(np.frombuffer(chunk, np.uint8))
    if more:
        data = np.concatenate([data, *more])
    return data, digest.hexdigest()


def map_file(path: Path) -> np.ndarray:
    """The bytes of ``path`` as a read-only uint8 array over the file, mapped, not copied (Ray
    copies such an array once into its object store and its receiver reads it there).

    Raises OSError; callers map it to their own error.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return np.zeros(0, np.uint8)
        return np.frombuffer(mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ), np.uint8)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def writable_dir(path: Path) -> Path:
    """``path`` as an absolute folder, created if needed and probed by writing in it.

    Raises OSError when it cannot be created or written; callers map it to their own error.
    """
    path = Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)
    probe = path / ".dmcs-write-probe"
    probe.write_bytes(b"")
    probe.unlink()
    return path


def write_durably(path: Path, data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` to ``path`` atomically: temp file, fsync, rename, fsync the folder.

    A crash leaves either the old file or the complete new one, never a torn write.
    Raises OSError; callers map it to their own error.
    """
    write_chunks(path, (data,))


def store_parts(path: Path, parts: Sequence[bytes | bytearray | memoryview]) -> tuple[str, int]:
    """Write ``parts`` one after the other to ``path`` as :func:`write_durably` does.

    Returns (sha256 hex, size), hashed on the way. Merging a header into a 70 MB raw changes
    only its first kilobytes; writing the new header and a view of the original amplifier
    bytes avoids copying the pixels twice.
    """
    digest = hashlib.sha256()

    def hashed() -> Iterator[bytes | bytearray | memoryview]:
        for part in parts:
            digest.update(part)
            yield part

    size = write_chunks(path, hashed())
    return digest.hexdigest(), size


def write_chunks(
    path: Path,
    chunks: Iterable[bytes | bytearray | memoryview],
    before_commit: Callable[[], None] | None = None,
) -> int:
    """Write ``chunks`` to ``path`` as :func:`write_durably` does; returns the size.

    ``before_commit`` runs once every chunk is written, before the fsync and the rename: what
    it raises leaves nothing behind (the temporary file is removed on any failure).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    size = 0
    try:
        with tmp.open("wb") as f:
            for chunk in chunks:
                f.write(chunk)
                size += len(chunk)
            f.flush()
            if before_commit is not None:
                before_commit()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    fsync_dir(path.parent)
    return size
