"""Cosmic-ray detection: pixels sharper than any PSF allows (LSST ``findCosmicRays`` style)."""

from __future__ import annotations

import numba
import numpy as np

from algorithms import mask as mk


@numba.njit(cache=True, nogil=True)
def _cr_seeds(
    img: np.ndarray, var: np.ndarray, mask: np.ndarray, bad_bits: int, nsig: float, contrast: float
) -> np.ndarray:
    """(y, x) of seeds; σ comes from ``var`` only where a pixel passes the cheap tests."""
    ny, nx = img.shape
    out = []
    for y in range(1, ny - 1):
        for x in range(1, nx - 1):
            v = img[y, x]
            if v <= 0 or mask[y, x] & bad_bits:
                continue
            w = var[y, x]
            if not np.isfinite(w) or v * v < nsig * nsig * w:
                continue
            s = np.sqrt(w)
            # A CR is brighter than the mean of at least one pair of opposite neighbours by
            # far more than a band-limited PSF can be (contrast ≈ 1.3 for FWHM ≈ 3 px).
            pairs = (
                0.5 * (img[y, x - 1] + img[y, x + 1]),
                0.5 * (img[y - 1, x] + img[y + 1, x]),
                0.5 * (img[y - 1, x - 1] + img[y + 1, x + 1]),
                0.5 * (img[y - 1, x + 1] + img[y + 1, x - 1]),
            )
            for m in pairs:
                if v - m > nsig * s and v > contrast * (m + s):
                    out.append((y, x))
                    break
    res = np.empty((len(out), 2), dtype=np.int64)
    for k in range(len(out)):
        res[k, 0], res[k, 1] = out[k]
    return res


@numba.njit(cache=True, nogil=True)
def _grow_and_mark(
    img: np.ndarray,
    var: np.ndarray,
    mask: np.ndarray,
    seeds: np.ndarray,
    grow_nsig: float,
    max_pixels: int,
    cr_bit: int,
) -> int:
    """Grow seeds (4-connected) into pixels within 2 (Manhattan) of a seed and above
    ``grow_nsig``; keep 8-connected groups of ≤ ``max_pixels``; set CR on them, grown by one
    pixel (4-connected). Returns the number of groups kept."""
    ny, nx = img.shape
    state = np.zeros((ny, nx), dtype=np.uint8)  # bit 1 near, 2 in CR, 4 labelled
    for k in range(seeds.shape[0]):
        sy, sx = seeds[k, 0], seeds[k, 1]
        for dy in range(-2, 3):
            for dx in range(-2 + abs(dy), 3 - abs(dy)):
                y, x = sy + dy, sx + dx
                if 0 <= y < ny and 0 <= x < nx:
                    state[y, x] |= 1
    stack = []
    members = []
    for k in range(seeds.shape[0]):
        sy, sx = seeds[k, 0], seeds[k, 1]
        if state[sy, sx] & 2:
            continue
        state[sy, sx] |= 2
        stack.append((sy, sx))
        while stack:
            y, x = stack.pop()
            members.append((y, x))
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                yy, xx = y + dy, x + dx
                if yy < 0 or yy >= ny or xx < 0 or xx >= nx or state[yy, xx] & 2:
                    continue
                w = var[yy, xx]
                v = img[yy, xx]
                if state[yy, xx] & 1 and np.isfinite(w) and v > 0 and v * v > grow_nsig**2 * w:
                    state[yy, xx] |= 2
                    stack.append((yy, xx))
    kept = 0
    group = []
    for k in range(len(members)):
        y0, x0 = members[k]
        if state[y0, x0] & 4:
            continue
        state[y0, x0] |= 4
        group.clear()
        stack.append((y0, x0))
        while stack:
            y, x = stack.pop()
            group.append((y, x))
            for dy in range(-1, 2):
                for dx in range(-1, 2):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < ny and 0 <= xx < nx and (state[yy, xx] & 6) == 2:
                        state[yy, xx] |= 4
                        stack.append((yy, xx))
        if len(group) > max_pixels:
            continue
        kept += 1
        for g in range(len(group)):
            y, x = group[g]
            mask[y, x] |= cr_bit
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < ny and 0 <= xx < nx:
                    mask[yy, xx] |= cr_bit
    return kept


def find_cosmic_rays(
    image: np.ndarray,
    variance: np.ndarray,
    background: np.ndarray | float,
    mask: np.ndarray,
    psf_sigma: float,
    nsig: float = 6.0,
    grow_nsig: float = 2.5,
    max_pixels: int = 400,
) -> int:
    """Find cosmic rays, set CR in ``mask`` (in-place) and return how many were found.

    The contrast threshold follows from the PSF: for a Gaussian of width σ the centre exceeds
    the mean of two opposite neighbours by at most exp(1/(2σ²)); a CR must exceed twice that
    (more with diagonal neighbours). Seeds are grown into neighbours above ``grow_nsig``.
    Everything after the seed scan touches only pixels near seeds.
    """
    if image.shape != variance.shape or image.shape != mask.shape:
        raise ValueError("image, variance and mask shapes differ")
    if psf_sigma <= 0:
        raise ValueError("psf_sigma must be positive")
    if np.isscalar(background) and float(background) == 0.0:  # type: ignore[arg-type]
        sub = np.ascontiguousarray(image, dtype=np.float32)
    else:
        sub = np.asarray(image - background, dtype=np.float32)
    var = np.ascontiguousarray(variance, dtype=np.float32)
    contrast = float(2.0 * np.exp(1.0 / psf_sigma**2))
    bad = mk.NO_DATA | mk.SAT | mk.BAD
    seeds = _cr_seeds(sub, var, mask, bad, nsig, contrast)
    if len(seeds) == 0:
        return 0
    return int(_grow_and_mark(sub, var, mask, seeds, grow_nsig, max_pixels, mk.CR))


def drop_repaired_centres(diasources: np.ndarray) -> np.ndarray:
    """The DIASources not centred on a repaired cosmic-ray pixel (``pixelFlags_crCenter``).

    A CR pixel of the science image is interpolated from its neighbours before subtraction,
    so at such a centre the difference measures the repair, not the sky (on comcam 10 of the
    validation nights' 149 false DIASources, and none of 117 real ones on the training and
    validation nights). Association already refuses them as founders of a DIAObject.
    """
    return diasources[~diasources["pixelFlags_crCenter"].astype(bool)]
