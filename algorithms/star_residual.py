"""What a DIASource near a static star looks like on the difference: a change of the star, or
what its subtraction left.

A real change of a star (a variable's few per cent) is the PSF, centred on the star, with a
flux the star's model-error floor cannot explain; a subtraction residual is a ring, an annulus
or a dipole around the star (the PSF's wings or registration wrong) whose PSF flux at the star
is within that floor. Both give DIASources with the same shape moments and flux ratios, so the
reliability model gets these columns (``STAR_COLUMNS``), measured once where the DIASource is:

- ``starOffset``: distance from the DIASource to the star, in PSF σ (NaN: no star);
- ``starFluxFraction``: |psfFlux| over the star's flux;
- ``starModelSnr``: the forced PSF flux on the difference at the star over
  √((s·σ_pix)² + (ε·F_star)²), ε the CCD's PSF-flux model error: the change measured against
  the star's own floor, positive when it has the DIASource's sign (a star dims as often as it
  brightens, so this and the correlations are taken in the direction of the DIASource);
- ``starFluxRatio``: that forced flux at the star over the DIASource's psfFlux (≈ 1 for a
  change of the star; small or of the other sign for a fragment of a ring);
- ``starPsfCorrelation``: normalised correlation of the difference with the PSF at the star
  (≈ 1 for a PSF-shaped change, ≈ 0 for a ring or a dipole);
- ``stampPsfCorrelation`` and ``stampAsymmetry``: the same correlation at the DIASource, and
  the share of the stamp's power in its part odd under a 180° rotation (a dipole's is ≈ 1).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from algorithms import mask as mk
from algorithms.model_noise import noise_scale_or_one
from algorithms.psf import Psf

STAR_COLUMNS: tuple[str, ...] = (
    "starOffset", "starFluxFraction", "starModelSnr", "starFluxRatio", "starPsfCorrelation",
    "stampPsfCorrelation", "stampAsymmetry",
)  # fmt: skip
BAD_BITS = mk.NO_DATA | mk.SAT | mk.BAD


def _stamp(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    psf: Psf,
    x: float,
    y: float,
    shift: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(psf, data, inverse variance) on the pixels where the PSF at (x, y) meets the image;
    without ``shift`` the PSF is centred on the nearest pixel (no sub-pixel resampling)."""
    if shift:
        k, x0, y0 = psf.realize(x, y)
    else:
        k = psf.fit_kernel_at(x, y)
        x0, y0 = round(x) - k.shape[0] // 2, round(y) - k.shape[0] // 2
    n = k.shape[0]
    ny, nx = image.shape
    ax0, ay0, ax1, ay1 = max(x0, 0), max(y0, 0), min(x0 + n, nx), min(y0 + n, ny)
    if ax1 - ax0 < n // 2 or ay1 - ay0 < n // 2:
        return None
    p = k[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0].astype(np.float64)
    d = image[ay0:ay1, ax0:ax1].astype(np.float64)
    v = variance[ay0:ay1, ax0:ax1].astype(np.float64)
    good = np.isfinite(d) & np.isfinite(v) & (v > 0) & ((mask[ay0:ay1, ax0:ax1] & BAD_BITS) == 0)
    w = np.where(good, 1.0 / np.where(good, v, 1.0), 0.0)
    return p, np.where(good, d, 0.0), w


def _correlation(p: np.ndarray, d: np.ndarray, w: np.ndarray) -> float:
    g = w > 0
    den = np.sqrt(float((p[g] ** 2).sum()) * float((d[g] ** 2).sum()))
    return float((p[g] * d[g]).sum()) / den if den > 0 else np.nan


def _asymmetry(image: np.ndarray, mask: np.ndarray, x: float, y: float, half: int) -> float:
    ix, iy = round(x), round(y)
    ny, nx = image.shape
    if ix - half < 0 or iy - half < 0 or ix + half >= nx or iy + half >= ny:
        return np.nan
    box = (slice(iy - half, iy + half + 1), slice(ix - half, ix + half + 1))
    d = image[box].astype(np.float64)
    good = np.isfinite(d) & ((mask[box] & BAD_BITS) == 0)
    good &= good[::-1, ::-1]
    d = np.where(good, d, 0.0)
    r = d[::-1, ::-1]
    total = float(((d - r) ** 2).sum() + ((d + r) ** 2).sum())
    return float(((d - r) ** 2).sum()) / total if total > 0 else np.nan


def _at_star(
    diff: np.ndarray, variance: np.ndarray, mask: np.ndarray, psf: Psf, x: float, y: float,
    noise_scale: float, floor: float,
) -> tuple[float, float, float]:  # fmt: skip
    """(forced PSF flux, its S/N against √((s·σ)² + floor²), PSF correlation) at a star."""
    st = _stamp(diff, variance, mask, psf, x, y)
    if st is None:
        return np.nan, np.nan, np.nan
    p, d, w = st
    a = float((p * p * w).sum())
    if a <= 0:
        return np.nan, np.nan, np.nan
    f = float((p * d * w).sum()) / a
    return f, f / float(np.hypot(noise_scale / np.sqrt(a), floor)), _correlation(p, d, w)


def star_residual_columns(
    dia: np.ndarray,
    diff: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    psf: Psf,
    calibration: float,
    noise_scale: float,
    eps: float,
    star_x: np.ndarray,
    star_y: np.ndarray,
    star_flux: np.ndarray,
    radius_sigma: float = 8.0,
) -> dict[str, np.ndarray]:
    """The ``STAR_COLUMNS`` of each DIASource (rows with x, y, psfFlux in calibrated units).

    ``variance`` is the difference's pixel variance (without a model term), ``noise_scale``
    its measured correction, ``eps`` the PSF-flux model error; the stars (x, y, science flux in
    counts) are the CCD's measured ones. The star of a DIASource is the one within
    ``radius_sigma`` PSF σ, at least as bright as the change, with the most flux over
    (1 + distance²): the bright star whose residual or change the DIASource may be.
    """
    if not (diff.shape == variance.shape == mask.shape):
        raise ValueError("diff, variance and mask shapes differ")
    if not (len(star_x) == len(star_y) == len(star_flux)):
        raise ValueError("star_x, star_y and star_flux lengths differ")
    n = len(dia)
    out = {c: np.full(n, np.nan, np.float32) for c in STAR_COLUMNS}
    if n == 0:
        return out
    ny, nx = diff.shape
    sigma = float(psf.sigma_at(nx / 2, ny / 2))
    s = noise_scale_or_one(noise_scale)
    e = eps if np.isfinite(eps) and eps > 0 else 0.0
    cal = calibration if np.isfinite(calibration) and calibration > 0 else 1.0
    x = np.asarray(dia["x"], np.float64)
    y = np.asarray(dia["y"], np.float64)
    dflux = np.abs(np.nan_to_num(np.asarray(dia["psfFlux"], np.float64))) / cal
    sx, sy, sf = (np.asarray(a, np.float64) for a in (star_x, star_y, star_flux))
    ok = np.isfinite(sx) & np.isfinite(sy) & np.isfinite(sf) & (sf > 0)
    sx, sy, sf = sx[ok], sy[ok], sf[ok]
    near: list[list[int]] = [[] for _ in range(n)]
    if len(sx):
        tree = cKDTree(np.stack([sx, sy], 1))
        near = tree.query_ball_point(np.stack([x, y], 1), r=radius_sigma * sigma)
    half = max(2, round(2.0 * sigma))
    at_star: dict[int, tuple[float, float, float]] = {}
    for k in range(n):
        if not (np.isfinite(x[k]) and np.isfinite(y[k])):
            continue
        sign = -1.0 if float(dia["psfFlux"][k]) < 0 else 1.0
        st = _stamp(diff, variance, mask, psf, x[k], y[k], shift=False)
        if st is not None:
            out["stampPsfCorrelation"][k] = sign * _correlation(*st)
        out["stampAsymmetry"][k] = _asymmetry(diff, mask, x[k], y[k], half)
        cand = [j for j in near[k] if sf[j] >= dflux[k]]
        if not cand:
            continue
        d2 = (sx[cand] - x[k]) ** 2 + (sy[cand] - y[k]) ** 2
        j = cand[int(np.argmax(sf[cand] / (1.0 + d2)))]
        out["starOffset"][k] = np.sqrt((sx[j] - x[k]) ** 2 + (sy[j] - y[k]) ** 2) / sigma
        out["starFluxFraction"][k] = dflux[k] / sf[j]
        if j not in at_star:
            at_star[j] = _at_star(diff, variance, mask, psf, sx[j], sy[j], s, e * sf[j])
        f, snr, corr = at_star[j]
        out["starModelSnr"][k] = sign * snr
        pf = float(dia["psfFlux"][k]) / cal
        out["starFluxRatio"][k] = f / pf if pf != 0 and np.isfinite(pf) else np.nan
        out["starPsfCorrelation"][k] = sign * corr
    return out


def fill_star_columns(
    dia: np.ndarray, diff: np.ndarray, variance: np.ndarray, mask: np.ndarray, psf: Psf,
    calibration: float, noise_scale: float, eps: float, stars: np.ndarray,
) -> None:  # fmt: skip
    """Fill the DIASources' ``STAR_COLUMNS`` in place, from the measured science ``stars``
    (x, y, flux; those with an ``ok`` column, the good ones)."""
    good = stars[stars["ok"]] if "ok" in (stars.dtype.names or ()) else stars
    cols = star_residual_columns(
        dia, diff, variance, mask, psf, calibration, noise_scale, eps,
        good["x"], good["y"], good["flux"],
    )  # fmt: skip
    for name in STAR_COLUMNS:
        dia[name] = cols[name]


def drop_star_residuals(
    dia: np.ndarray, min_fraction: float, max_offset_sigma: float = 2.3548
) -> np.ndarray:
    """The DIASources that are not what subtraction left of a static star.

    Dropped: those centred within ``max_offset_sigma`` PSF σ (one FWHM) of a measured star
    whose own |psfFlux| and the forced PSF flux on the difference at the star are both below
    ``min_fraction`` of the star's flux (``starOffset``, ``starFluxFraction``,
    ``starFluxRatio``). A PSF-model or registration error leaves a fraction of every star's
    flux in the difference that no pixel variance describes, so on a bright star a peak
    (detected, kept below threshold for being on a star, or found by ``star_change_peaks``)
    is significant against the pixel noise whatever its size; a change of the star is seen
    at the star itself, a residual's fragments are not. Saturated centres are left alone
    (their star's measured flux misses the clipped core), as are DIASources without a star.
    """
    if not len(dia) or not (min_fraction > 0):
        return dia
    off = np.asarray(dia["starOffset"], np.float64)
    frac = np.asarray(dia["starFluxFraction"], np.float64)
    at_star = frac * np.abs(np.asarray(dia["starFluxRatio"], np.float64))
    sat = np.asarray(dia["pixelFlags_saturatedCenter"], bool)
    with np.errstate(invalid="ignore"):
        residual = (off <= max_offset_sigma) & (frac < min_fraction) & ~sat
        residual &= np.nan_to_num(at_star, nan=np.inf) < min_fraction
    return dia[~residual]
