"""Changes of known stars: forced PSF flux on the difference image at each measured star.

The difference image's detection variance carries a model-error term ``(ε·S)²`` measured on
the wings of bright stars (``model_noise.add_model_error``), so a change of a few per cent of
a bright star is lost in it even when it is many times its pixel noise: on comcam all the
unsaturated misses at true S/N ≥ 7 were variable stars of 17–19.6 mag changing by 4.5–6 %.
At a star's centre a PSF flux sees far less of that error (ε_psf,
``model_noise.psf_flux_model_error``). Each star bright enough for the detection's term to
matter is forced-photometered on the difference at its science-image position, and its
significance is the flux over √((s·σ_pix)² + (ε_psf·F_static)²); the stars that reach the
detection threshold become peaks, measured as DIASources like any other.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from algorithms import mask as mk
from algorithms.detection import PEAK_DTYPE
from algorithms.measure import forced_psf_flux
from algorithms.psf import Psf

#: Pixels a forced flux must not use, and a star centre must not touch (saturated
#: surroundings leave residuals that no ε describes).
_BAD = mk.NO_DATA | mk.SAT | mk.BAD | mk.CR | mk.INTRP | mk.EDGE
_BAD_CENTRE = _BAD | mk.SUSPECT


def star_change_peaks(
    diff: np.ndarray,
    pixel_variance: np.ndarray,
    mask: np.ndarray,
    psf: Psf,
    star_x: np.ndarray,
    star_y: np.ndarray,
    star_flux: np.ndarray,
    existing: np.ndarray,
    noise_scale: float,
    eps_psf: float,
    eps_detection: float,
    threshold: float = 5.0,
    min_separation: float = 10.0,
) -> np.ndarray:
    """Peaks (``PEAK_DTYPE``, footprint 0) of significant PSF-flux changes at known stars.

    ``star_x``, ``star_y``, ``star_flux``: stars measured on the science image (flux in the
    difference's units); ``pixel_variance``: the difference variance without the model term;
    ``existing``: the peaks already detected (a star within ``min_separation`` pixels of one
    is left to it). Only stars whose flux error grows by ≥ 10 % with the detection's ε are
    tried (elsewhere the detection already sees what the forced flux would); none at all when
    ``eps_psf`` is not below ``eps_detection``.
    """
    if not (diff.shape == pixel_variance.shape == mask.shape):
        raise ValueError("diff, pixel_variance and mask shapes differ")
    if not (len(star_x) == len(star_y) == len(star_flux)):
        raise ValueError("star_x, star_y and star_flux lengths differ")
    if not (np.isfinite(eps_psf) and eps_psf < eps_detection) or len(star_x) == 0:
        return np.zeros(0, PEAK_DTYPE)
    s = noise_scale if noise_scale > 0 and np.isfinite(noise_scale) else 1.0
    ny, nx = diff.shape
    xs, ys = np.asarray(star_x, np.float64), np.asarray(star_y, np.float64)
    keep = np.isfinite(xs) & np.isfinite(ys) & np.isfinite(star_flux) & (star_flux > 0)
    if len(existing):
        tree = cKDTree(np.stack([existing["x"], existing["y"]], axis=1).astype(np.float64))
        d, _ = tree.query(np.stack([xs, ys], axis=1), distance_upper_bound=min_separation)
        keep &= ~np.isfinite(d)
    rows: list[tuple] = []
    half = int(np.ceil(min_separation))
    for k in np.flatnonzero(keep).tolist():
        x, y, f_star = xs[k], ys[k], float(star_flux[k])
        ix, iy = round(x), round(y)
        if not (0 <= ix < nx and 0 <= iy < ny) or mask[iy, ix] & _BAD_CENTRE:
            continue
        f, err, _, nd, trunc = forced_psf_flux(diff, pixel_variance, mask, psf, x, y, _BAD)
        if nd == 0 or trunc or not (np.isfinite(f) and np.isfinite(err) and err > 0):
            continue
        pix = s * err
        # the detection's ε inflates this star's error by < 10 %: detection already sees it
        if eps_detection * f_star < 0.46 * pix:
            continue
        static = max(f_star - f, 0.0)
        z = f / np.hypot(pix, eps_psf * static)
        if abs(z) < threshold:
            continue
        rows.append(
            (0, ix, iy, float(z), float(diff[iy, ix]), bool(z < 0), 0,
             max(ix - half, 0), max(iy - half, 0), min(ix + half + 1, nx), min(iy + half + 1, ny))
        )  # fmt: skip
    return np.array(rows, PEAK_DTYPE) if rows else np.zeros(0, PEAK_DTYPE)


def saturated_star_peaks(
    diff: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    psf: Psf,
    existing: np.ndarray,
    fwhm: float,
    noise_scale: float,
    threshold: float = 5.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One peak at each saturated star whose wings changed; and the fragments it replaces.

    A saturated core is zeroed before subtraction, so a variable saturated star leaves its
    change only in its wings, as fragments on a ring 1–2″ out (each more than 1″ from the
    star). Its centre is the centroid of the saturated region (charge bleeds up and down the
    column alike); the forced PSF flux there on the unsaturated pixels, with ``variance``
    (the model term included: the wings are where it was measured), decides. When significant
    the peaks of its polarity within the region's SUSPECT box (``flag_saturation_surroundings``)
    are its fragments: their indices in ``existing`` come back to be replaced by the one peak.
    A star without a detected fragment gets none (the forced flux only places what the
    detection found; the ε of the wings is not measured on saturated stars).
    Regions touching the CCD edge are left alone (their centroid is not the star's).
    """
    from scipy import ndimage

    none = (np.zeros(0, PEAK_DTYPE), np.zeros(0, np.int64))
    sat = (mask & mk.SAT) != 0
    if not sat.any():
        return none
    s = noise_scale if noise_scale > 0 and np.isfinite(noise_scale) else 1.0
    ny, nx = mask.shape
    labels, _ = ndimage.label(sat)
    rows: list[tuple] = []
    replaced: list[int] = []
    for lab, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        y0, y1, x0, x1 = box[0].start, box[0].stop, box[1].start, box[1].stop
        if y0 == 0 or x0 == 0 or y1 == ny or x1 == nx:
            continue
        yy, xx = np.nonzero(labels[box] == lab)
        x, y = x0 + float(xx.mean()), y0 + float(yy.mean())
        f, err, _, nd, _ = forced_psf_flux(diff, variance, mask, psf, x, y, _BAD)
        if nd == 0 or not (np.isfinite(f) and np.isfinite(err) and err > 0):
            continue
        z = f / (s * err)
        if abs(z) < threshold:
            continue
        r = int(np.ceil(2.0 * fwhm + min(np.sqrt(yy.size), y1 - y0, x1 - x0)))
        near = (
            (existing["negative"] == (z < 0))
            & (existing["x"] >= x0 - r) & (existing["x"] < x1 + r)
            & (existing["y"] >= y0 - r) & (existing["y"] < y1 + r)
        )  # fmt: skip
        if not near.any():
            continue
        replaced += np.flatnonzero(near).tolist()
        ix, iy = round(x), round(y)
        rows.append(
            (0, ix, iy, float(z), float(diff[iy, ix]), bool(z < 0), 0,
             max(x0 - r, 0), max(y0 - r, 0), min(x1 + r, nx), min(y1 + r, ny))
        )  # fmt: skip
    if not rows:
        return none
    return np.array(rows, PEAK_DTYPE), np.unique(np.array(replaced, np.int64))
