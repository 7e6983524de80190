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
    star and the further that reaches. Each connected SAT region gets a ring of radius
    ``max(2 FWHM + sqrt(area), min_radius)``. Returns the number of pixels newly flagged.
    """
    from scipy import ndimage

    sat = (mask & SAT) != 0
    if not sat.any():
        return 0
    labels, _ = ndimage.label(sat, structure=np.ones((3, 3), bool))
    boxes = ndimage.find_objects(labels)
    areas = np.bincount(labels.ravel())
    grown = np.zeros(mask.shape, bool)
    ny, nx = mask.shape
    for k, box in enumerate(boxes, start=1):
        r = int(np.ceil(max(2.0 * fwhm + np.sqrt(areas[k]), min_radius)))
        y0, y1 = max(box[0].start - r, 0), min(box[0].stop + r, ny)
        x0, x1 = max(box[1].start - r, 0), min(box[1].stop + r, nx)
        own = labels[y0:y1, x0:x1] == k
        dist = ndimage.distance_transform_edt(~own)
        grown[y0:y1, x0:x1] |= dist <= r
    new = grown & ~sat & ((mask & SUSPECT) == 0)
    mask[new] |= SUSPECT
    return int(new.sum())
