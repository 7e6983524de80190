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


def flag_saturation_surroundings(
    mask: np.ndarray, fwhm: float, radius_fwhm: float = 3.0, min_radius: float = 2.0
) -> int:
    """Set SUSPECT within ``radius_fwhm`` FWHM of every saturated pixel of ``mask``, in place.

    A saturated core (or bleed trail) is clipped in the science image, so subtraction leaves
    the missing charge, spread by the kernels, around it. On mini nights (seeds 101–106,
    201–202) the peaks of those residuals lie 1.0–2.6 FWHM from the nearest saturated pixel,
    the transients beside saturated stars 3.2 FWHM and beyond: the surroundings are a
    distance from the saturated pixels themselves, not their bounding box (which along a
    long bleed trail covered transients 9 FWHM from it). Regions are found on 4×4 blocks
    (cheap on a 4k CCD), distances on each region's box. Returns the number of regions.
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
    r = max(radius_fwhm * fwhm, min_radius)
    g = int(np.ceil(r))
    for box in ndimage.find_objects(labels):
        y0, y1 = max(box[0].start * b - g, 0), min(box[0].stop * b + g, ny)
        x0, x1 = max(box[1].start * b - g, 0), min(box[1].stop * b + g, nx)
        near = ndimage.distance_transform_edt(~sat[y0:y1, x0:x1]) <= r
        mask[y0:y1, x0:x1][near] |= SUSPECT
    np.bitwise_and(mask, ~np.int32(SUSPECT), out=mask, where=sat)
    return int(n)
