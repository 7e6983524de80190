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


def flag_saturation_surroundings(mask: np.ndarray, fwhm: float, min_radius: float = 2.0) -> int:
    """Set SUSPECT around every saturated region of a difference image's ``mask``, in place.

    A saturated core (or bleed trail) is clipped in the science image, so subtraction leaves
    the missing charge, spread by the PSF, around it: the bigger the region, the brighter the
    star and the further that reaches. Each saturated region's bounding box is widened by
    ``max(2 FWHM + min(sqrt(area), width), min_radius)`` (a bleed trail reaches as far as it
    is wide, not as long). Regions are found on 4×4 blocks (cheap on a 4k CCD; boxes grow by
    at most 3 px). Returns the number of saturated regions.
    """
    from scipy import ndimage

    sat = (mask & SAT) != 0
    if not sat.any():
        return 0
    b = 4
    ny, nx = mask.shape
    py, px = -ny % b, -nx % b
    blocks = np.pad(sat, ((0, py), (0, px))).reshape((ny + py) // b, b, (nx + px) // b, b)
    labels, n = ndimage.label(blocks.any(axis=(1, 3)), structure=np.ones((3, 3), bool))
    for box in ndimage.find_objects(labels):
        y0, y1 = box[0].start * b, min(box[0].stop * b, ny)
        x0, x1 = box[1].start * b, min(box[1].stop * b, nx)
        area = int(np.count_nonzero(sat[y0:y1, x0:x1]))
        width = min(y1 - y0, x1 - x0)
        r = int(np.ceil(max(2.0 * fwhm + min(np.sqrt(area), width), min_radius)))
        mask[max(y0 - r, 0) : y1 + r, max(x0 - r, 0) : x1 + r] |= SUSPECT
    np.bitwise_and(mask, ~np.int32(SUSPECT), out=mask, where=sat)
    return int(n)
