"""Source detection: PSF-matched filter, threshold in significance, footprints and peaks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from algorithms import mask as mk

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


def significance_image(image: np.ndarray, variance: np.ndarray, psf_sigma: float) -> np.ndarray:
    """Matched-filter S/N: (image ⊗ G) / sqrt(variance ⊗ G²) for a Gaussian PSF of ``psf_sigma``.

    G² is a Gaussian of width σ/√2 with integral 1/(4πσ²), so the variance term is exact for
    a spatially varying variance plane.
    """
    if image.shape != variance.shape:
        raise ValueError("image and variance shapes differ")
    if psf_sigma <= 0:
        raise ValueError("psf_sigma must be positive")
    img = np.asarray(image, dtype=np.float32)
    var = np.asarray(variance, dtype=np.float32)
    smooth = ndimage.gaussian_filter(img, psf_sigma, mode="constant", truncate=3.5)
    vs = ndimage.gaussian_filter(var, psf_sigma / np.sqrt(2.0), mode="nearest", truncate=3.5)
    vs *= np.float32(1.0 / (4.0 * np.pi * psf_sigma**2))
    with np.errstate(invalid="ignore", divide="ignore"):
        sig = smooth / np.sqrt(vs)
    sig[~np.isfinite(sig)] = 0.0
    return sig


def _peaks_for_polarity(
    sig: np.ndarray,
    image: np.ndarray,
    threshold: float,
    min_pixels: int,
    min_separation: float,
    negative: bool,
) -> tuple[list[tuple], np.ndarray]:
    above = sig >= threshold
    labels, nlab = ndimage.label(above)
    rows: list[tuple] = []
    if nlab == 0:
        return rows, labels
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        fp = labels[sl] == lab
        npix = int(fp.sum())
        if npix < min_pixels:
            labels[sl][fp] = 0
            continue
        s = np.where(fp, sig[sl], -np.inf)
        mx = ndimage.maximum_filter(s, size=3, mode="constant", cval=-np.inf)
        py, px = np.nonzero((s == mx) & fp)
        order = np.argsort(-s[py, px])
        kept: list[tuple[int, int]] = []
        for k in order:
            y, x = int(py[k]) + sl[0].start, int(px[k]) + sl[1].start
            if any((y - ky) ** 2 + (x - kx) ** 2 < min_separation**2 for ky, kx in kept):
                continue
            kept.append((y, x))
            sgn = -1.0 if negative else 1.0
            rows.append(
                (
                    -lab if negative else lab,
                    x,
                    y,
                    sgn * float(sig[y, x]),
                    sgn * float(image[y, x]),
                    negative,
                    npix,
                    sl[1].start,
                    sl[0].start,
                    sl[1].stop,
                    sl[0].stop,
                )
            )
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
) -> Detections:
    """Detect at ``threshold`` σ (matched filter) on a background-subtracted image.

    Sets DETECTED (and DETECTED_NEGATIVE when ``negative``) in ``mask`` in-place. Peaks in
    one footprint closer than 2 FWHM are merged (no deblending).
    """
    if image.shape != mask.shape:
        raise ValueError("image and mask shapes differ")
    sig = significance_image(image, variance, psf_sigma)
    sig[(mask & exclude_bits) != 0] = 0.0
    sep = 2.0 * 2.3548 * psf_sigma
    rows, labels = _peaks_for_polarity(sig, image, threshold, min_pixels, sep, False)
    mask[labels > 0] |= mk.DETECTED
    if negative:
        nrows, nlabels = _peaks_for_polarity(-sig, -image, threshold, min_pixels, sep, True)
        mask[nlabels > 0] |= mk.DETECTED_NEGATIVE
        rows += nrows
        labels = labels - nlabels
    peaks = np.array(rows, dtype=PEAK_DTYPE) if rows else np.zeros(0, dtype=PEAK_DTYPE)
    return Detections(peaks=peaks, labels=labels, significance=sig)
