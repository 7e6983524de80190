"""Source detection: PSF-matched filter, threshold in significance, footprints and peaks."""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from algorithms import mask as mk
from algorithms.fastconv import gaussian_smooth

PEAK_DTYPE = np.dtype(
    [
        ("footprint", "i4"),
        ("x", "i4"),
        ("y", "i4"),
        ("significance", "f4"),
        ("value", "f4"),
        ("negative", "?"),
        ("npix", "i4"),
        ("x0", "i4"),
        ("y0", "i4"),
        ("x1", "i4"),
        ("y1", "i4"),
    ]
)


@dataclass
class Detections:
    """Peaks (one row each, with their footprint's bbox) and the footprint label image.

    ``labels`` is positive for positive footprints and negative for negative ones.
    """

    peaks: np.ndarray
    labels: np.ndarray
    significance: np.ndarray
    noise_scale: float = 1.0


def false_alarm_threshold(
    sig: np.ndarray, mask: np.ndarray, exclude_bits: int, max_false: float, floor: float
) -> float:
    """The threshold u (≥ ``floor``) at which a unit-variance noise ``sig`` has ``max_false``
    peaks of either sign, as the Euler characteristic of a smooth Gaussian field gives them:
    N(u) = 2 A λ₂ u exp(−u²/2) / (2π)^{3/2} for A unmasked pixels, λ₂ the variance of the
    field's gradient. A 4k×4k difference smoothed by its PSF (σ ≈ 2 px) holds ~4 noise peaks
    above 5σ, so a fixed 5σ threshold makes the CCD size, not the sky, set the false rate.
    λ₂ is measured on the image (−2 ln of the robust lag-1 correlation, x and y averaged):
    it carries the correlation that warping and PSF matching add to the noise.
    """
    st = max(2, min(sig.shape) // 256)  # ~256 rows and columns: ~10⁶ pairs on a 4k CCD
    z = sig[::st, :]
    ok = (mask[::st, :] & exclude_bits) == 0
    pair = ok[:, 1:] & ok[:, :-1]
    a, b = z[:, 1:][pair], z[:, :-1][pair]
    zy, oky = sig[:, ::st], (mask[:, ::st] & exclude_bits) == 0
    pair_y = oky[1:, :] & oky[:-1, :]
    c, d = zy[1:, :][pair_y], zy[:-1, :][pair_y]
    area = sig.size * float(np.mean((mask[::4, ::4] & exclude_bits) == 0))
    if a.size < 1000 or c.size < 1000 or not (max_false > 0):
        return floor
    lams = []
    for u, v in ((a, b), (c, d)):
        s_sum = 1.4826 * float(np.median(np.abs(u + v - np.median(u + v))))
        s_dif = 1.4826 * float(np.median(np.abs(u - v - np.median(u - v))))
        rho = (s_sum**2 - s_dif**2) / (s_sum**2 + s_dif**2) if s_sum > 0 else 0.0
        lams.append(-2.0 * np.log(min(max(rho, 1e-3), 1.0 - 1e-6)))
    lam = float(np.mean(lams))
    k = 2.0 * area * lam / (2.0 * np.pi) ** 1.5 / max_false
    u = floor
    for _ in range(20):  # u = sqrt(2 ln(k u)), a contraction for u > 1
        if k * u <= 1.0:
            break
        u = float(np.sqrt(2.0 * np.log(k * u)))
    return max(u, floor)


def drop_noise_peaks(
    det: Detections,
    mask: np.ndarray,
    exclude_bits: int,
    max_false: float,
    floor: float,
    star_x: np.ndarray,
    star_y: np.ndarray,
    radius: float,
) -> float:
    """Drop, in place, the peaks of ``det`` below the false-alarm threshold u
    (``false_alarm_threshold``) that lie farther than ``radius`` from every star.

    A peak on a known star is a change of a star (a variable) with far higher prior odds than
    one on blank sky, and stars cover ~1 % of a CCD: noise peaks there are few. Returns u.
    """
    u = false_alarm_threshold(det.significance, mask, exclude_bits, max_false, floor)
    pk = det.peaks
    faint = np.abs(pk["significance"]) < u
    if not faint.any():
        return u
    on_star = np.zeros(len(pk), bool)
    if len(star_x):
        tree = cKDTree(np.stack([star_x, star_y], axis=1).astype(np.float64))
        d, _ = tree.query(np.stack([pk["x"][faint], pk["y"][faint]], axis=1).astype(np.float64))
        on_star[faint] = d <= radius
    det.peaks = pk[~faint | on_star]
    return u


def significance_image(image: np.ndarray, variance: np.ndarray, psf_sigma: float) -> np.ndarray:
    """Matched-filter S/N: (image ⊗ G) / sqrt(variance ⊗ G²) for a Gaussian PSF of ``psf_sigma``.

    G² is a Gaussian of width σ/√2 with integral 1/(4πσ²), so the variance term is exact for
    a spatially varying variance plane.
    """
    if image.shape != variance.shape:
        raise ValueError("image and variance shapes differ")
    if psf_sigma <= 0:
        raise ValueError("psf_sigma must be positive")
    smooth = gaussian_smooth(image, psf_sigma)
    vs = gaussian_smooth(variance, psf_sigma / np.sqrt(2.0), nearest=True)
    _to_significance(smooth, vs, np.float32(1.0 / (4.0 * np.pi * psf_sigma**2)))
    return smooth


@numba.njit(cache=True, nogil=True)
def _to_significance(smooth: np.ndarray, vs: np.ndarray, scale: np.float32) -> None:
    ny, nx = smooth.shape
    for y in range(ny):
        for x in range(nx):
            v = vs[y, x] * scale
            s = smooth[y, x] / np.sqrt(v) if v > 0 else np.float32(0.0)
            smooth[y, x] = s if np.isfinite(s) else np.float32(0.0)


@numba.njit(cache=True, nogil=True)
def _footprint_candidates(
    sig: np.ndarray, labels: np.ndarray, nlab: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per footprint size and bbox; candidate peaks: local 3×3 maxima within the footprint."""
    ny, nx = sig.shape
    npix = np.zeros(nlab + 1, dtype=np.int64)
    bbox = np.empty((nlab + 1, 4), dtype=np.int64)  # x0, y0, x1, y1 (exclusive)
    bbox[:, 0] = nx
    bbox[:, 1] = ny
    bbox[:, 2] = -1
    bbox[:, 3] = -1
    cand_l = [np.int64(0) for _ in range(0)]
    cand_y = [np.int64(0) for _ in range(0)]
    cand_x = [np.int64(0) for _ in range(0)]
    cand_s = [np.float64(0.0) for _ in range(0)]
    for y in range(ny):
        for x in range(nx):
            lab = labels[y, x]
            if lab == 0:
                continue
            npix[lab] += 1
            bbox[lab, 0] = min(bbox[lab, 0], x)
            bbox[lab, 1] = min(bbox[lab, 1], y)
            bbox[lab, 2] = max(bbox[lab, 2], x + 1)
            bbox[lab, 3] = max(bbox[lab, 3], y + 1)
            v = sig[y, x]
            is_max = True
            for dy in range(-1, 2):
                yy = y + dy
                if yy < 0 or yy >= ny:
                    continue
                for dx in range(-1, 2):
                    xx = x + dx
                    if 0 <= xx < nx and labels[yy, xx] == lab and sig[yy, xx] > v:
                        is_max = False
            if is_max:
                cand_l.append(np.int64(lab))
                cand_y.append(np.int64(y))
                cand_x.append(np.int64(x))
                cand_s.append(np.float64(v))
    return (
        np.array(cand_l, dtype=np.int64), np.array(cand_y, dtype=np.int64),
        np.array(cand_x, dtype=np.int64), np.array(cand_s, dtype=np.float64), npix, bbox,
    )  # fmt: skip


@numba.njit(cache=True, nogil=True)
def _merge_peaks(
    labels: np.ndarray, lab_a: np.ndarray, cand_y: np.ndarray, cand_x: np.ndarray,
    order: np.ndarray, npix: np.ndarray, min_pixels: int, min_sep: float,
) -> np.ndarray:  # fmt: skip
    """Greedy merge (brightest first, ``order``) of peaks closer than ``min_sep`` within a
    footprint; footprints under ``min_pixels`` are erased from ``labels``. Rows: lab, y, x."""
    ny, nx = labels.shape
    n = lab_a.size
    out = np.empty((n, 3), dtype=np.int64)
    m = 0
    sep2 = min_sep * min_sep
    k = 0
    while k < n:
        lab = lab_a[order[k]]
        first = m
        while k < n and lab_a[order[k]] == lab:
            i = order[k]
            k += 1
            if npix[lab] < min_pixels:
                continue
            y, x = cand_y[i], cand_x[i]
            close = False
            for j in range(first, m):
                if (y - out[j, 1]) ** 2 + (x - out[j, 2]) ** 2 < sep2:
                    close = True
                    break
            if not close:
                out[m, 0], out[m, 1], out[m, 2] = lab, y, x
                m += 1
    for y in range(ny):
        for x in range(nx):
            lab = labels[y, x]
            if lab != 0 and npix[lab] < min_pixels:
                labels[y, x] = 0
    return out[:m]


def _peaks_for_polarity(
    sig: np.ndarray,
    image: np.ndarray,
    threshold: float,
    min_pixels: int,
    min_separation: float,
    negative: bool,
) -> tuple[list[tuple], np.ndarray]:
    labels, nlab = ndimage.label(sig >= threshold)
    rows: list[tuple] = []
    if nlab == 0:
        return rows, labels
    lab_a, cy, cx, cs, npix, bbox = _footprint_candidates(sig, labels, nlab)
    order = np.lexsort((-cs, lab_a))
    pk = _merge_peaks(labels, lab_a, cy, cx, order, npix, min_pixels, min_separation)
    sgn = -1.0 if negative else 1.0
    for lab, y, x in pk.tolist():
        x0, y0, x1, y1 = bbox[lab].tolist()
        rows.append(
            (-lab if negative else lab, x, y, sgn * float(sig[y, x]), sgn * float(image[y, x]),
             negative, int(npix[lab]), x0, y0, x1, y1)
        )  # fmt: skip
    return rows, labels


def detect_sources(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    psf_sigma: float,
    threshold: float = 5.0,
    negative: bool = False,
    min_pixels: int = 3,
    exclude_bits: int = mk.NO_DATA,
    normalize_noise: bool = False,
) -> Detections:
    """Detect at ``threshold`` σ (matched filter) on a background-subtracted image.

    Sets DETECTED (and DETECTED_NEGATIVE when ``negative``) in ``mask`` in-place. Peaks of
    one polarity closer than 2 FWHM are merged (no deblending), also across footprints, so
    a footprint cut in two by an excluded (e.g. bad) column yields one peak. With
    ``normalize_noise`` the significance image is divided by its measured robust σ: noise
    correlated by warping or PSF matching makes var ⊗ G² underestimate the smoothed noise
    (by ~6 % in a ZOGY difference), which would otherwise lower the effective threshold.
    """
    if image.shape != mask.shape:
        raise ValueError("image and mask shapes differ")
    sig = significance_image(image, variance, psf_sigma)
    sig[(mask & exclude_bits) != 0] = 0.0
    scale = _robust_sigma(sig, mask, exclude_bits) if normalize_noise else 1.0
    if normalize_noise:
        sig /= np.float32(scale)
    sep = 2.0 * 2.3548 * psf_sigma
    rows, labels = _peaks_for_polarity(sig, image, threshold, min_pixels, sep, False)
    mask[labels > 0] |= mk.DETECTED
    rows = _merge_close(rows, sep)
    if negative:
        nrows, nlabels = _peaks_for_polarity(-sig, -image, threshold, min_pixels, sep, True)
        mask[nlabels > 0] |= mk.DETECTED_NEGATIVE
        rows += _merge_close(nrows, sep)
        labels = labels - nlabels
    peaks = np.array(rows, dtype=PEAK_DTYPE) if rows else np.zeros(0, dtype=PEAK_DTYPE)
    return Detections(peaks=peaks, labels=labels, significance=sig, noise_scale=scale)


def _robust_sigma(sig: np.ndarray, mask: np.ndarray, exclude_bits: int) -> float:
    """MAD σ of the significance image on a 2×2-subsampled grid, excluded pixels left out."""
    z = sig[::2, ::2][(mask[::2, ::2] & exclude_bits) == 0]
    if z.size < 1000:
        return 1.0
    s = 1.4826 * float(np.median(np.abs(z - np.median(z))))
    return s if np.isfinite(s) and s > 0 else 1.0


def _merge_close(rows: list[tuple], sep: float) -> list[tuple]:
    """Drop peaks within ``sep`` of a more significant peak of the same polarity."""
    if len(rows) < 2:
        return rows
    xy = np.array([(r[1], r[2]) for r in rows], dtype=float)
    s = np.abs(np.array([r[3] for r in rows]))
    pairs = cKDTree(xy).query_pairs(sep, output_type="ndarray")
    if len(pairs) == 0:
        return rows
    nbrs: dict[int, list[int]] = {}
    for a, b in pairs.tolist():
        nbrs.setdefault(a, []).append(b)
        nbrs.setdefault(b, []).append(a)
    drop: set[int] = set()
    for i in sorted(nbrs, key=lambda k: -s[k]):
        if i not in drop:
            drop.update(nbrs[i])
    return [r for k, r in enumerate(rows) if k not in drop]
