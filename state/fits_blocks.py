"""The FITS file layout shared by every hand-written reader and writer: 2880-byte blocks of
80-character cards, a header ended by ``END`` and padded with spaces, data big-endian and
padded with zeros (the summit and base layers both read and write it; neither imports the
other)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

BLOCK = 2880
CARD = 80


def padded(size: int) -> int:
    """``size`` bytes rounded up to whole blocks."""
    return -(-size // BLOCK) * BLOCK


def header_block(cards: Iterable[str]) -> bytes:
    """A header from its cards (80 characters each, or runs of them), ``END`` and padding."""
    text = "".join(cards) + f"{'END':<{CARD}}"
    return (text + " " * (-len(text) % BLOCK)).encode("ascii")


def data_block(array: np.ndarray) -> bytes:
    """An image's data: big-endian, padded with zeros to whole blocks."""
    raw = array.astype(array.dtype.newbyteorder(">"), copy=False).tobytes()
    return raw + b"\0" * (-len(raw) % BLOCK)
