"""Interpolation over masked pixels (defects, saturation, cosmic rays)."""

from __future__ import annotations

import numba
import numpy as np

from algorithms import mask as mk


@numba.njit(cache=True, nogil=True)
def _interp_rows(
    image: np.ndarray, mask: np.ndarray, bits: int, max_gap: int, intrp: int
) -> np.ndarray:
    ny, nx = image.shape
    done = np.zeros(image.shape, dtype=np.bool_)
    for y in range(ny):
        x = 0
        while x < nx:
            if not mask[y, x] & bits:
                x += 1
                continue
            start = x
            while x < nx and mask[y, x] & bits:
                x += 1
            stop = x
            if stop - start > max_gap:
                continue
            left = start - 1
            right = stop
            if left < 0 and right >= nx:
                continue
            if left < 0:
                for k in range(start, stop):
                    image[y, k] = image[y, right]
                    done[y, k] = True
            elif right >= nx:
                for k in range(start, stop):
                    image[y, k] = image[y, left]
                    done[y, k] = True
            else:
                vl = image[y, left]
                vr = image[y, right]
                span = right - left
                for k in range(start, stop):
                    t = (k - left) / span
                    image[y, k] = vl + (vr - vl) * t
                    done[y, k] = True
            for k in range(start, stop):
                if done[y, k]:
                    mask[y, k] |= intrp
    return done


def interpolate_masked(
    image: np.ndarray, mask: np.ndarray, bits: int, max_gap: int = 64
) -> np.ndarray:
    """Linearly interpolate along rows over pixels with ``bits`` set; sets INTRP in-place.

    Runs longer than ``max_gap`` (e.g. bleed trails across a row) are left alone. Rows are
    used because bad columns and bleed trails, the common defects, run along columns.
    Returns the boolean map of interpolated pixels.
    """
    if image.shape != mask.shape:
        raise ValueError("image and mask shapes differ")
    return _interp_rows(image, mask, bits, max_gap, mk.INTRP)
