"""Base storage of raws: atomic, fsync'd writes of a file given in parts, hashed on the way.

Merging a header into a 70 MB raw changes only its first few kilobytes; writing the new
header and a view of the original amplifier bytes avoids copying the pixels twice.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path


def store_parts(path: Path, parts: Sequence[bytes | memoryview]) -> tuple[str, int]:
    """Write ``parts`` one after the other to ``path`` durably; returns (sha256 hex, size).

    Temp file, fsync, rename, fsync of the folder: a crash leaves the old file or the whole
    new one. Raises OSError.
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
