"""Durable files: a component acknowledges data only after it is safely on disk."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file, fsync, rename, fsync the folder.

    A crash leaves either the old file or the complete new one, never a torn write.
    Raises OSError; callers map it to their own error.
    """
    store_parts(path, (data,))


def store_parts(path: Path, parts: Sequence[bytes | memoryview]) -> tuple[str, int]:
    """Write ``parts`` one after the other to ``path`` as :func:`write_durably` does.

    Returns (sha256 hex, size), hashed on the way. Merging a header into a 70 MB raw changes
    only its first kilobytes; writing the new header and a view of the original amplifier
    bytes avoids copying the pixels twice.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    digest = hashlib.sha256()
    size = 0
    with tmp.open("wb") as f:
        for part in parts:
            digest.update(part)
            f.write(part)
            size += len(part)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return digest.hexdigest(), size
