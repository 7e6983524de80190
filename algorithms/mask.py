"""The 32-bit mask plane: one bit per condition, names after the LSST afw mask planes."""

from __future__ import annotations

import numpy as np

MASK_DTYPE = np.int32

BAD = 1 << 0
SAT = 1 << 1
INTRP = 1 << 2
CR = 1 << 3
EDGE = 1 << 4
DETECTED = 1 << 5
DETECTED_NEGATIVE = 1 << 6
SUSPECT = 1 << 7
NO_DATA = 1 << 8
CROSSTALK = 1 << 9
STREAK = 1 << 10
INJECTED = 1 << 11

PLANES: dict[str, int] = {
    "BAD": BAD,
    "SAT": SAT,
    "INTRP": INTRP,
    "CR": CR,
    "EDGE": EDGE,
    "DETECTED": DETECTED,
    "DETECTED_NEGATIVE": DETECTED_NEGATIVE,
    "SUSPECT": SUSPECT,
    "NO_DATA": NO_DATA,
    "CROSSTALK": CROSSTALK,
    "STREAK": STREAK,
    "INJECTED": INJECTED,
}

#: Pixels that must not be used to estimate the sky or fit a model.
UNUSABLE = BAD | SAT | CR | NO_DATA | SUSPECT


def new_mask(shape: tuple[int, int]) -> np.ndarray:
    return np.zeros(shape, dtype=MASK_DTYPE)


def plane_names(value: int) -> list[str]:
    """Names of the bits set in ``value``."""
    return [name for name, bit in PLANES.items() if value & bit]


def header_cards() -> dict[str, int]:
    """FITS cards (``MP_<NAME>`` = bit index) describing the planes, as afw writes them."""
    return {f"MP_{name}": int(bit).bit_length() - 1 for name, bit in PLANES.items()}
