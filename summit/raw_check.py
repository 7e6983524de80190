"""Checks a raw from the camera before the summit buffer accepts it: checksum and FITS layout.

The checksum is computed once, while the staged file is read (:func:`read_checked_raw`); the layout
check then reads only the headers, walking from one HDU to the next by the data sizes they
declare, since the checksum already covers the pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
from astropy.io import fits

from state.direct_io import aligned_empty
from state.durable import read_hashed, sha256_hex
from state.errors import ChecksumMismatchError, InvalidInputError
from state.fits_blocks import BLOCK, CARD, padded

#: More HDUs than any camera writes: a bound on the walk through a malformed file.
MAX_HDUS = 1024
#: The longest header read (in blocks).
MAX_HEADER_BLOCKS = 256


def path_from_url(url: str) -> Path:
    """The local path of a ``file://`` URL (the camera's DAQ staging area)."""
    parsed = urlparse(url)
    if parsed.scheme != "file" or not parsed.path:
        raise InvalidInputError(f"expected a file:// URL, got {url!r}")
    return Path(unquote(parsed.path))


def confined_path(
    url: str, folders: Sequence[str | Path], reader: str = "this buffer takes raws from"
) -> Path:
    """The file of the ``file://`` URL ``url``, with ``..`` and symlinks resolved, if it lies
    in one of ``folders``; ``InvalidInputError`` otherwise, before anything is read (a message
    naming a file must not make a component read any file of its machine)."""
    try:
        source = path_from_url(url).resolve()
    except (OSError, RuntimeError) as e:
        raise InvalidInputError(f"{url!r} cannot be resolved: {e}") from e
    dirs = [str(d) for d in folders if str(d)]
    if not any(source.is_relative_to(Path(d).resolve()) for d in dirs):
        raise InvalidInputError(
            f"{url!r} is {source}, outside the folders {reader}: {', '.join(dirs) or 'none'}"
        )
    return source


def read_checked_raw(path: Path, checksum: str, visit: int, detector: int) -> np.ndarray:
    """The staged raw at ``path``, read and hashed in one pass, then checked as by
    :func:`check_raw`. Raises ``InvalidInputError`` also when it cannot be read. The array is
    page-aligned, so the buffer writes it to disk without a copy (``state.direct_io``)."""
    try:
        data, actual = read_hashed(path, aligned_empty)
    except OSError as e:
        raise InvalidInputError(f"cannot read the staged raw {path}: {e}") from e
    check_raw(data, actual, checksum, visit, detector)
    return data


def verify_raw(data: bytes | bytearray, checksum: str, visit: int, detector: int) -> None:
    """Raise unless ``data`` has ``checksum`` and is a raw of ``visit``/``detector``."""
    check_raw(data, sha256_hex(data), checksum, visit, detector)


def check_raw(
    data: bytes | bytearray | np.ndarray, actual: str, checksum: str, visit: int, detector: int
) -> None:
    """Raise unless ``actual`` (the sha256 of ``data``) is the camera's ``checksum`` and the
    headers make a raw of ``visit``/``detector``: a data-less primary HDU naming them, then
    ``NAMPS`` two-dimensional amplifier images, and nothing after them."""
    if actual != checksum:
        raise ChecksumMismatchError(
            f"raw of visit {visit} detector {detector}: sha256 {actual[:12]}… "
            f"differs from the camera's {checksum[:12]}…"
        )
    where = f"raw of visit {visit} detector {detector}"
    try:
        primary, amps = _headers(memoryview(data))
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"{where} is not a readable FITS file: {e}") from e
    if primary.get("VISIT") != visit or primary.get("DETECTOR") != detector:
        raise InvalidInputError(
            f"raw header says visit {primary.get('VISIT')} detector "
            f"{primary.get('DETECTOR')}, the camera said {visit}/{detector}"
        )
    if int(primary.get("NAXIS", -1)) != 0:
        raise InvalidInputError(f"{where}: its primary HDU holds data")
    namps = int(primary.get("NAMPS", -1))
    if namps != len(amps) or any(naxis != 2 for naxis in amps):
        raise InvalidInputError(
            f"{where} has {len(amps)} amplifier images, its header says NAMPS={namps}"
        )


def _headers(data: memoryview) -> tuple[fits.Header, list[int]]:
    """The primary header and the NAXIS of every extension, read header by header."""
    end, cards = _header_at(data, 0)
    primary = fits.Header.fromstring(bytes(data[:end]).decode("ascii"))
    offset = end + padded(_data_size(cards))
    naxes = []
    while offset < len(data):
        if len(naxes) >= MAX_HDUS:
            raise ValueError(f"more than {MAX_HDUS} HDUs")
        end, cards = _header_at(data, offset)
        naxes.append(cards.get("NAXIS", -1))
        offset = end + padded(_data_size(cards))
    if offset != len(data):
        raise ValueError(f"truncated: its HDUs need {offset} bytes, it has {len(data)}")
    return primary, naxes


def _header_at(data: memoryview, offset: int) -> tuple[int, dict[str, int]]:
    """The end of the header that starts at ``offset`` and its integer structural cards."""
    cards: dict[str, int] = {}
    for block in range(MAX_HEADER_BLOCKS):
        start = offset + block * BLOCK
        chunk = bytes(data[start : start + BLOCK])
        if len(chunk) < BLOCK:
            raise ValueError(f"no END card in the header at byte {offset}")
        for i in range(0, BLOCK, CARD):
            card = chunk[i : i + CARD]
            key = card[:8].rstrip()
            if key == b"END":
                return start + BLOCK, cards
            if card[8:10] == b"= " and (key in _STRUCTURAL or key.startswith(b"NAXIS")):
                cards[key.decode("ascii")] = int(card[10:].split(b"/")[0])
    raise ValueError(f"the header at byte {offset} is longer than {MAX_HEADER_BLOCKS} blocks")


_STRUCTURAL = frozenset({b"BITPIX", b"PCOUNT", b"GCOUNT"})


def _data_size(cards: dict[str, int]) -> int:
    naxis = cards.get("NAXIS", 0)
    if naxis == 0:
        return 0
    count = 1
    for i in range(1, naxis + 1):
        count *= cards.get(f"NAXIS{i}", 0)
    bits = abs(cards.get("BITPIX", 8))
    return bits // 8 * cards.get("GCOUNT", 1) * (cards.get("PCOUNT", 0) + count)
