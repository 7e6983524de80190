"""The errors of what is measured on the difference image: scaled by the measured noise of the
matched-filter image, and PSF fluxes with the PSF-model term."""

from __future__ import annotations

import numpy as np

from algorithms.measure import forced_psf_flux
from algorithms.model_noise import flux_positions_at_stars, noise_scale_or_one
from algorithms.psf import Psf

#: Errors of what is measured on the difference image (fluxes and centroids).
DIFFERENCE_ERRORS = (
    "psfFluxErr", "apFluxErr", "trailFluxErr", "dipoleMeanFluxErr", "dipoleFluxDiffErr",
    "xErr", "yErr", "raErr", "decErr",
)  # fmt: skip


def scale_difference_errors(dia: np.ndarray, noise_scale: float) -> None:
    """Multiply the difference-image errors by the measured noise scale (in place).

    Warping and PSF matching correlate the difference noise, so errors propagated from the
    per-pixel variance are too small by the robust σ of the matched-filter significance
    image (1.0-1.4 measured): the noise of a PSF-weighted flux, the very quantity psfFlux is.
    """
    s = noise_scale_or_one(noise_scale)
    if s != 1.0 and len(dia):
        for name in DIFFERENCE_ERRORS:
            dia[name] *= np.float32(s)
        dia["ra_dec_Cov"] *= np.float32(s**2)


def psf_flux_with_model_error(
    dia: np.ndarray, diff: np.ndarray, variance: np.ndarray, mask: np.ndarray, psf: Psf,
    calibration: float, noise_scale: float, eps: float, stars: np.ndarray | None = None,
) -> None:  # fmt: skip
    """Re-measure psfFlux of the single-PSF DIASources with pixel-noise weights, in place.

    The flux is a PSF fit at the DIASource's position with ``variance`` (without the model
    term); its error is √((s·σ_pix)² + (ε·templateFlux)²), s the measured noise scale, ε the
    PSF-flux model error (``psf_flux_model_error``) and templateFlux the static flux under
    the source. The detection's model term, measured on the wings of bright stars, would
    both weight the fit towards the wings and overstate the error of a flux at a star. A
    change at one of the measured science ``stars`` (x, y, flux) is fitted at the star's
    centroid (``flux_positions_at_stars``).
    """
    s = noise_scale_or_one(noise_scale)
    fx, fy = dia["x"], dia["y"]
    if stars is not None and len(stars) and len(dia) and calibration > 0:
        fx, fy = flux_positions_at_stars(
            dia["x"], dia["y"], dia["psfFlux"] / calibration, stars["x"], stars["y"],
            stars["flux"],
        )  # fmt: skip
    for k, row in enumerate(dia):
        if row["dipoleFitAttempted"] or row["psfFlux_flag"]:
            continue
        f, err, _, nd, _ = forced_psf_flux(diff, variance, mask, psf, fx[k], fy[k])
        if nd == 0 or not (np.isfinite(f) and np.isfinite(err)):
            continue
        tf = float(row["templateFlux"])
        tf = tf if np.isfinite(tf) and tf > 0 else 0.0
        row["psfFlux"] = f * calibration
        row["psfFluxErr"] = np.hypot(s * err * calibration, eps * tf)
