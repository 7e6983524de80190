"""Whether a CCD's image is worth processing at all: missing data, all zero or constant,
saturated (one pass over the 4k×4k pixels)."""

from __future__ import annotations

import numba
import numpy as np

from algorithms import mask as mk


@numba.njit(cache=True, nogil=True)
def _sanity_counts(
    image: np.ndarray, mask: np.ndarray, nodata_bit: int, sat_bit: int, every: int
) -> tuple[int, int, int, bool]:
    """One pass: NO_DATA pixels, zeros and SAT among the others, and whether every
    ``every``-th of the others (in row order) holds one and the same finite value."""
    nodata = zeros = sat = 0
    k = 0
    first = np.float32(0.0)
    constant = False
    ny, nx = image.shape
    for y in range(ny):
        for x in range(nx):
            m = mask[y, x]
            if m & nodata_bit:
                nodata += 1
                continue
            v = image[y, x]
            if v == 0:
                zeros += 1
            if m & sat_bit:
                sat += 1
            if k % every == 0:
                if k == 0:
                    first, constant = v, bool(np.isfinite(v))
                elif v != first:
                    constant = False
            k += 1
    return nodata, zeros, sat, constant


def image_sanity(image: np.ndarray, mask: np.ndarray, max_bad_fraction: float) -> str | None:
    """The reason the image is not worth processing, or None."""
    nodata, zeros, sat, constant = _sanity_counts(image, mask, mk.NO_DATA, mk.SAT, 97)
    n = image.size
    valid = n - nodata
    if nodata / n > max_bad_fraction:
        return f"too_much_missing_data:{nodata / n:.2f}"
    if (valid and zeros / valid > 0.9) or constant:
        return "all_zero_or_constant_image"
    if sat / n > max_bad_fraction:
        return f"saturated_image:{sat / n:.2f}"
    return None
