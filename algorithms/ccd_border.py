"""Detections cut by the end of the CCD."""

from __future__ import annotations

import numpy as np


def border_peaks(peaks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Indices of the ``peaks`` on a CCD's outermost row or column.

    A maximum there is a slope cut by the CCD's end, not a peak: whatever made it is centred
    beyond the edge, where neither its position nor its flux can be measured (the centroid
    stays on the pixel). On the difference image the convolutions' mirror padding leaves the
    residuals of stars just outside the CCD on that row: on mini 101-106 + 201-202, 104 peaks
    there matched nothing and 2 matched a true source (one centred off the CCD); the real
    sources within 1 px of the edge peak on the second row or column.
    """
    if not len(peaks):
        return np.zeros(0, np.int64)
    ny, nx = shape
    x, y = peaks["x"], peaks["y"]
    return np.flatnonzero((x <= 0) | (y <= 0) | (x >= nx - 1) | (y >= ny - 1))
