"""Base storage of a received raw: verified and written durably in one pass over its bytes.

The summit buffer carries the camera's sha256 with every raw. Ingest checks it while it writes
the file (merged with the header service's header when that is already known): each chunk of
the amplifier data is hashed for the check and, when the header was merged, for the stored
file's own checksum, then written, so the 70 MB are read from memory once. The file is renamed
into place only when the checksum matched; a mismatch leaves nothing behind. The write goes
past the page cache (``state.direct_io``): one copy less, and no dirty pages left behind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from astropy.io import fits

from base.header_merge import merged_primary, split_primary
from state.direct_io import write_chunks_direct
from state.errors import ChecksumMismatchError, InvalidInputError
from state.fits_blocks import BLOCK

#: The most of a raw read for its primary header.
HEAD_BYTES = 64 * BLOCK
_CHUNK = 4 << 20


def store_raw(
    path: Path, data: memoryview, checksum: str, header: fits.Header | None
) -> tuple[str, int]:
    """Write ``data`` (the raw as sent, sha256 ``checksum``) to ``path`` durably, its primary
    header merged with ``header`` when given; returns (sha256 of the stored file, its size).

    Raises ``ChecksumMismatchError`` when ``data`` is not what was sent (nothing is written),
    ``InvalidInputError`` when its primary header cannot be merged, ``OSError`` when the file
    cannot be written.
    """
    raw_hash = hashlib.sha256()
    file_hash = raw_hash
    head: bytes | memoryview = data[:0]
    rest = data
    if header is not None:
        try:
            raw_header, offset = split_primary(bytes(data[:HEAD_BYTES]))
        except InvalidInputError:
            _expect(hashlib.sha256(data).hexdigest(), checksum)
            raise
        file_hash = hashlib.sha256()
        raw_hash.update(data[:offset])
        head, rest = merged_primary(raw_header, header), data[offset:]

    def hashed() -> Iterator[bytes | memoryview]:
        file_hash.update(head)
        yield head
        for start in range(0, len(rest), _CHUNK):
            chunk = rest[start : start + _CHUNK]
            raw_hash.update(chunk)
            if file_hash is not raw_hash:
                file_hash.update(chunk)
            yield chunk

    size = write_chunks_direct(path, hashed(), lambda: _expect(raw_hash.hexdigest(), checksum))
    return file_hash.hexdigest(), size


def _expect(actual: str, checksum: str) -> None:
    if actual != checksum:
        raise ChecksumMismatchError(f"arrived with sha256 {actual[:12]}…, sent as {checksum[:12]}…")
