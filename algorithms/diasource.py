"""DIASource measurement on a difference image; columns follow Rubin's APDB DiaSource."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from algorithms import mask as mk
from algorithms.detection import Detections
from algorithms.dipole import fit_dipole
from algorithms.measure import aperture_flux, forced_psf_flux, psf_fit
from algorithms.moments import adaptive_moments
from algorithms.psf import Psf
from algorithms.reliability import RELIABILITY_VERSION, reliability_score
from algorithms.star_residual import STAR_COLUMNS
from algorithms.wcs import TanSipWcs

_F4 = [
    "raErr", "decErr", "ra_dec_Cov", "x", "y", "xErr", "yErr", "apFlux", "apFluxErr", "snr",
    "psfFlux", "psfFluxErr", "psfLnL", "psfChi2", "trailFlux", "trailFluxErr", "trailLength",
    "trailAngle", "dipoleMeanFlux", "dipoleMeanFluxErr", "dipoleFluxDiff", "dipoleFluxDiffErr",
    "dipoleLength", "dipoleAngle", "dipoleChi2", "scienceFlux", "scienceFluxErr", "templateFlux",
    "templateFluxErr", "ixx", "iyy", "ixy", "ixxPSF", "iyyPSF", "ixyPSF", "extendedness",
    "reliability", "templateBackground",
]  # fmt: skip
_BOOL = [
    "centroid_flag", "apFlux_flag", "apFlux_flag_apertureTruncated", "isNegative",
    "psfFlux_flag", "psfFlux_flag_edge", "psfFlux_flag_noGoodPixels", "trail_flag",
    "trail_flag_edge", "forced_PsfFlux_flag", "shape_flag", "isDipole", "dipoleFitAttempted",
    "pixelFlags", "pixelFlags_bad", "pixelFlags_cr", "pixelFlags_crCenter", "pixelFlags_edge",
    "pixelFlags_nodata", "pixelFlags_nodataCenter", "pixelFlags_interpolated",
    "pixelFlags_interpolatedCenter", "pixelFlags_saturated", "pixelFlags_saturatedCenter",
    "pixelFlags_suspect", "pixelFlags_suspectCenter", "pixelFlags_streak",
    "pixelFlags_streakCenter",
]  # fmt: skip
DIASOURCE_DTYPE = np.dtype(
    [("diaSourceId", "i8"), ("visit", "i8"), ("detector", "i2"), ("ra", "f8"), ("dec", "f8")]
    + [("trailRa", "f8"), ("trailDec", "f8")]
    + [(n, "f4") for n in _F4]
    # not APDB columns: features of the reliability model (``algorithms.star_residual``)
    + [(n, "f4") for n in STAR_COLUMNS]
    + [("psfNdata", "i4"), ("dipoleNdata", "i4"), ("bboxSize", "i4")]
    + [(n, "?") for n in _BOOL]
    + [("reliabilityVersion", "U16")]
)

_DIPOLE_COLS = (
    "dipoleMeanFlux", "dipoleMeanFluxErr", "dipoleFluxDiff", "dipoleFluxDiffErr",
    "dipoleLength", "dipoleAngle", "dipoleChi2",
)  # fmt: skip
_PIXEL_FLAGS = {
    "bad": mk.BAD, "cr": mk.CR, "edge": mk.EDGE, "nodata": mk.NO_DATA,
    "interpolated": mk.INTRP, "saturated": mk.SAT, "suspect": mk.SUSPECT, "streak": mk.STREAK,
}  # fmt: skip


@dataclass(frozen=True)
class DiaImages:
    """Everything measured: the difference image, science and warped template (same grid)."""

    diff: np.ndarray
    diff_var: np.ndarray
    diff_mask: np.ndarray
    diff_psf: Psf
    science: np.ndarray
    science_var: np.ndarray
    science_psf: Psf
    template: np.ndarray
    template_var: np.ndarray
    template_psf: Psf
    template_background: np.ndarray | None
    wcs: TanSipWcs
    calibration: float


def _jacobian(wcs: TanSipWcs, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """d(east, north)/d(x, y) in arcsec per pixel, shape (n, 2, 2)."""
    _, dec = wcs.pixel_to_sky(x, y)
    out = np.empty((len(x), 2, 2))
    for k, (dx, dy) in enumerate(((0.5, 0.0), (0.0, 0.5))):
        r1, d1 = wcs.pixel_to_sky(x + dx, y + dy)
        r0, d0 = wcs.pixel_to_sky(x - dx, y - dy)
        dra = ((r1 - r0 + 180.0) % 360.0) - 180.0
        out[:, 0, k] = dra * np.cos(np.deg2rad(dec)) * 3600.0
        out[:, 1, k] = (d1 - d0) * 3600.0
    return out


def _sky_moments(j: np.ndarray, ixx: float, iyy: float, ixy: float) -> tuple[float, float, float]:
    m = j @ np.array([[ixx, ixy], [ixy, iyy]]) @ j.T
    return float(m[0, 0]), float(m[1, 1]), float(m[0, 1])


def _position_angle(j: np.ndarray, vx: float, vy: float) -> float:
    e, n = j @ np.array([vx, vy])
    return float(np.degrees(np.arctan2(e, n)) % 180.0)


def _pair_dipoles(peaks: np.ndarray, max_sep: float) -> list[tuple[int, int | None]]:
    pos = np.nonzero(~peaks["negative"])[0]
    neg = np.nonzero(peaks["negative"])[0]
    used_neg: set[int] = set()
    out: list[tuple[int, int | None]] = []
    if pos.size and neg.size:
        tree = cKDTree(np.stack([peaks["x"][neg], peaks["y"][neg]], axis=1))
        d, j = tree.query(np.stack([peaks["x"][pos], peaks["y"][pos]], axis=1))
        for i, dist, jj in zip(pos, d, j, strict=True):
            if dist <= max_sep and int(neg[jj]) not in used_neg:
                used_neg.add(int(neg[jj]))
                out.append((int(i), int(neg[jj])))
            else:
                out.append((int(i), None))
    else:
        out = [(int(i), None) for i in pos]
    out += [(int(i), None) for i in neg if int(i) not in used_neg]
    return out


def measure_diasources(
    det: Detections,
    imgs: DiaImages,
    visit: int = 0,
    detector: int = 0,
    aperture_radius: float = 12.0,
) -> np.ndarray:
    """One DiaSource row per positive/negative peak (adjacent pairs merged as dipoles)."""
    psf = imgs.diff_psf
    ny, nx = imgs.diff.shape
    cal = imgs.calibration
    sigma = psf.sigma_at(nx / 2, ny / 2)
    pixx, piyy, pixy = psf.moments_at(nx / 2, ny / 2)
    tpsf = pixx + piyy
    groups = _pair_dipoles(det.peaks, 2.5 * 2.3548 * sigma)
    rows = np.zeros(len(groups), dtype=DIASOURCE_DTYPE)
    for name in STAR_COLUMNS:
        rows[name] = np.nan
    xs = np.zeros(len(groups))
    ys = np.zeros(len(groups))
    for r, (ip, ineg) in enumerate(groups):
        pk = det.peaks[ip]
        row = rows[r]
        row["visit"], row["detector"], row["diaSourceId"] = visit, detector, r
        negative = bool(pk["negative"])
        sgn = -1.0 if negative else 1.0
        x0, y0 = float(pk["x"]), float(pk["y"])
        if ineg is not None:
            q = det.peaks[ineg]
            x0, y0 = 0.5 * (x0 + q["x"]), 0.5 * (y0 + q["y"])
        fit = psf_fit(imgs.diff, imgs.diff_var, imgs.diff_mask, psf, x0, y0)
        if not fit.ok or ineg is not None:
            fit = psf_fit(imgs.diff, imgs.diff_var, imgs.diff_mask, psf, x0, y0, n_iter=1)
        x, y = (fit.x, fit.y) if fit.ok else (x0, y0)
        xs[r], ys[r] = x, y
        row["x"], row["y"] = x, y
        row["xErr"], row["yErr"] = fit.x_err, fit.y_err
        row["centroid_flag"] = not fit.ok
        row["isNegative"] = negative and ineg is None
        row["psfFlux"] = fit.flux * cal
        row["psfFluxErr"] = fit.flux_err * cal
        row["psfChi2"], row["psfNdata"], row["psfLnL"] = fit.chi2, fit.ndata, fit.lnl
        row["psfFlux_flag"] = not fit.ok
        row["psfFlux_flag_edge"] = fit.edge
        row["psfFlux_flag_noGoodPixels"] = fit.ndata == 0
        row["snr"] = abs(float(pk["significance"]))
        af, ae, trunc = aperture_flux(imgs.diff, imgs.diff_var, x, y, aperture_radius)
        row["apFlux"], row["apFluxErr"] = af * cal, ae * cal
        row["apFlux_flag"], row["apFlux_flag_apertureTruncated"] = not np.isfinite(af), trunc
        sf = forced_psf_flux(imgs.science, imgs.science_var, None, imgs.science_psf, x, y)
        tf = forced_psf_flux(imgs.template, imgs.template_var, None, imgs.template_psf, x, y)
        row["scienceFlux"], row["scienceFluxErr"] = sf[0] * cal, sf[1] * cal
        row["templateFlux"], row["templateFluxErr"] = tf[0] * cal, tf[1] * cal
        row["forced_PsfFlux_flag"] = not (np.isfinite(sf[0]) and np.isfinite(tf[0]))
        if imgs.template_background is not None:
            iy, ix = min(max(round(y), 0), ny - 1), min(max(round(x), 0), nx - 1)
            row["templateBackground"] = imgs.template_background[iy, ix] * cal
        else:
            row["templateBackground"] = np.nan
        h = int(8 * sigma) + 8
        bx0, by0 = max(round(x) - h, 0), max(round(y) - h, 0)
        stamp = sgn * imgs.diff[by0 : round(y) + h + 1, bx0 : round(x) + h + 1]
        mom = adaptive_moments(stamp, x - bx0, y - by0, sigma0=sigma)
        row["shape_flag"] = not mom.ok
        ixx, iyy, ixy = (mom.ixx, mom.iyy, mom.ixy) if mom.ok else (np.nan,) * 3
        _fill_trail(row, ixx, iyy, ixy, pixx, piyy, pixy, fit.flux, fit.flux_err, cal)
        snr = abs(fit.flux / fit.flux_err) if fit.ok and fit.flux_err > 0 else float(row["snr"])
        size_ratio = (ixx + iyy) / tpsf if mom.ok else np.nan
        z = (size_ratio - 1.1) / (2.0 * np.sqrt(2.0) / max(snr, 1.0) + 0.02)
        row["extendedness"] = 1.0 / (1.0 + np.exp(-z)) if np.isfinite(z) else np.nan
        row["dipoleFitAttempted"] = ineg is not None
        if ineg is not None:
            dp = fit_dipole(
                imgs.diff, imgs.diff_var, imgs.diff_mask, psf, det.peaks[ip], det.peaks[ineg]
            )
            row["dipoleMeanFlux"] = dp.mean_flux * cal
            row["dipoleMeanFluxErr"] = dp.mean_flux_err * cal
            row["dipoleFluxDiff"] = dp.flux_diff * cal
            row["dipoleFluxDiffErr"] = dp.flux_diff_err * cal
            row["dipoleChi2"], row["dipoleNdata"] = dp.chi2, dp.ndata
            row["isDipole"] = dp.is_dipole
            if not dp.is_dipole and np.isfinite(dp.flux_diff) and dp.flux_diff_err > 0:
                # a real change that also moved: its flux is the net of the two lobes
                row["psfFlux"], row["psfFluxErr"] = dp.flux_diff * cal, dp.flux_diff_err * cal
            row["dipoleLength"] = np.hypot(dp.dx, dp.dy)
            row["dipoleAngle"] = np.arctan2(dp.dy, dp.dx)
            xs[r], ys[r] = dp.x, dp.y
            row["x"], row["y"] = dp.x, dp.y
        else:
            for n in _DIPOLE_COLS:
                row[n] = np.nan
        row["bboxSize"] = int(max(pk["x1"] - pk["x0"], pk["y1"] - pk["y0"]))
        _fill_pixel_flags(row, imgs.diff_mask, det, pk, x, y)
        row["ixx"], row["iyy"], row["ixy"] = ixx, iyy, ixy
        row["ixxPSF"], row["iyyPSF"], row["ixyPSF"] = pixx, piyy, pixy
        row["reliability"] = reliability_score(row, size_ratio)
        row["reliabilityVersion"] = RELIABILITY_VERSION
    if len(rows):
        _to_sky(rows, imgs.wcs, xs, ys)
    return rows


def _fill_trail(
    row: np.void,
    ixx: float,
    iyy: float,
    ixy: float,
    pixx: float,
    piyy: float,
    pixy: float,
    flux: float,
    flux_err: float,
    cal: float,
) -> None:
    """Trail length from the excess second moment along the major axis: σ² = σ²_psf + L²/12."""
    row["trailFlux"], row["trailFluxErr"] = flux * cal, flux_err * cal
    if not np.isfinite(ixx):
        row["trail_flag"] = True
        row["trailLength"] = row["trailAngle"] = np.nan
        return
    ex, ey, exy = ixx - pixx, iyy - piyy, ixy - pixy
    tr = ex + ey
    disc = np.sqrt(max(((ex - ey) / 2) ** 2 + exy**2, 0.0))
    lam = tr / 2 + disc
    row["trailLength"] = np.sqrt(12.0 * lam) if lam > 0 else 0.0
    row["trailAngle"] = 0.5 * np.arctan2(2 * exy, ex - ey)


def _fill_pixel_flags(
    row: np.void, mask: np.ndarray, det: Detections, pk: np.void, x: float, y: float
) -> None:
    ny, nx = mask.shape
    fp = mask[pk["y0"] : pk["y1"], pk["x0"] : pk["x1"]]
    lab = det.labels[pk["y0"] : pk["y1"], pk["x0"] : pk["x1"]] == pk["footprint"]
    any_bits = int(np.bitwise_or.reduce(fp[lab])) if lab.any() else 0
    # Detection skips saturated pixels, so a footprint never holds one: a footprint that
    # touches a saturated region (within 2 px of its box) is on saturated pixels.
    near = mask[max(pk["y0"] - 2, 0) : pk["y1"] + 2, max(pk["x0"] - 2, 0) : pk["x1"] + 2]
    any_bits |= int(np.bitwise_or.reduce(near.ravel())) & mk.SAT
    ix, iy = min(max(round(x), 0), nx - 1), min(max(round(y), 0), ny - 1)
    centre = int(
        np.bitwise_or.reduce(mask[max(iy - 1, 0) : iy + 2, max(ix - 1, 0) : ix + 2].ravel())
    )
    for name, bit in _PIXEL_FLAGS.items():
        row[f"pixelFlags_{name}"] = bool(any_bits & bit)
        if f"pixelFlags_{name}Center" in DIASOURCE_DTYPE.names:
            row[f"pixelFlags_{name}Center"] = bool(centre & bit)
    row["pixelFlags"] = bool(
        any_bits & (mk.BAD | mk.SAT | mk.CR | mk.NO_DATA | mk.INTRP | mk.EDGE | mk.SUSPECT)
    )


def _to_sky(rows: np.ndarray, wcs: TanSipWcs, xs: np.ndarray, ys: np.ndarray) -> None:
    ra, dec = wcs.pixel_to_sky(xs, ys)
    rows["ra"], rows["dec"] = ra, dec
    rows["trailRa"], rows["trailDec"] = ra, dec
    jac = _jacobian(wcs, xs, ys)
    scale2 = 1.0 / 3600.0**2
    for k in range(len(rows)):
        r = rows[k]
        j = jac[k]
        cov = np.array([[r["xErr"] ** 2, 0.0], [0.0, r["yErr"] ** 2]])
        s = j @ cov @ j.T * scale2
        r["raErr"], r["decErr"] = np.sqrt(s[0, 0]), np.sqrt(s[1, 1])
        r["ra_dec_Cov"] = s[0, 1]
        if np.isfinite(r["ixx"]):
            r["ixx"], r["iyy"], r["ixy"] = _sky_moments(j, r["ixx"], r["iyy"], r["ixy"])
        r["ixxPSF"], r["iyyPSF"], r["ixyPSF"] = _sky_moments(
            j, r["ixxPSF"], r["iyyPSF"], r["ixyPSF"]
        )
        if np.isfinite(r["trailAngle"]):
            th = float(r["trailAngle"])
            r["trailAngle"] = _position_angle(j, np.cos(th), np.sin(th))
            r["trailLength"] = r["trailLength"] * np.sqrt(abs(np.linalg.det(j)))
        if np.isfinite(r["dipoleLength"]):
            th = float(r["dipoleAngle"])
            r["dipoleAngle"] = _position_angle(j, np.cos(th), np.sin(th))
            r["dipoleLength"] = r["dipoleLength"] * np.sqrt(abs(np.linalg.det(j)))
