"""Changes of known stars: forced PSF flux on the difference image at each measured star.

The difference image's detection variance carries a model-error term ``(ε·S)²`` measured on
the wings of bright stars (``model_noise.add_model_error``), so a change of a few per cent of
a bright star is lost in it even when it is many times its pixel noise: on comcam all the
unsaturated misses at true S/N ≥ 7 were variable stars of 17–19.6 mag changing by 4.5–6 %.
At a star's centre a PSF flux sees far less of that error (ε_psf,
``model_noise.psf_flux_model_error``). Each star bright enough for the detection's term to
matter is forced-photometered on the difference at its science-image position, and its
significance is the flux over √((s·σ_pix)² + (ε·F_static)²); the stars that reach the
detection threshold become peaks, measured as DIASources like any other.

ε is the CCD's ε_psf kept within ``STAR_EPS_BOUNDS``. ε_psf comes from a CCD's ten-odd
brightest stars, variables and transients among them: on mini it ranged 0.000–0.015 (the
cap), while the bright static stars' own residuals are 0.2–2 % of their flux. At 0.000 a
2.3 % residual of an 840 000 e⁻ star was a 17σ "change"; at the cap a 5 % change of an
18.7 mag variable was 2.7σ (or not tried at all, as the test was skipped when ε_psf was not
below the detection's ε).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from algorithms import mask as mk
from algorithms.detection import PEAK_DTYPE
from algorithms.measure import forced_psf_flux, linear_flux, psf_fit
from algorithms.model_noise import noise_scale_or_one
from algorithms.psf import Psf
from algorithms.wcs import TanSipWcs

#: Pixels a forced flux must not use, and a star centre must not touch (saturated
#: surroundings leave residuals that no ε describes).
_BAD = mk.NO_DATA | mk.SAT | mk.BAD | mk.CR | mk.INTRP | mk.EDGE
_BAD_CENTRE = _BAD | mk.SUSPECT

#: Bounds of the ε of a star's PSF flux on the difference, from the bright (F > 5·10⁴ e⁻)
#: static stars of the mini training nights (101–106, 872 star-visits): 0.0050 is ε_psf's own
#: estimator on all of them at once (pixel noise counted), 0.0065 the robust σ of their
#: |f|/F (pixel noise included, an upper bound). With them no static star of mini 101–106,
#: 201–202 reaches 5σ (at most 4.3σ) and changes of 4–6 % of 16–19 mag stars do (6.4–7.5σ).
STAR_EPS_BOUNDS = (0.0050, 0.0065)

#: The error of a saturated star's change (``saturated_star_change``) that the pixel noise
#: does not hold, per unit of the star's flux: the science PSF model's wings (a Moffat fitted
#: to its core) against the star's. On the static saturated stars of comcam 101–103 (91
#: star-visits) ΔF/F had rms 0.0108 (robust σ 0.0064, at most 0.037), the pixel noise 0.001;
#: the two changes of a saturated variable there (7.5 % true) measured 7.1 % and 8.1 %. On
#: mini 101–106 (512² CCDs, crowded, fewer clean PSF stars) the rms was 0.039: see
#: docs/alert_quality.md.
EPS_SATURATED = 0.012
#: The saturated pixels are grown by this many FWHM before the wings are fitted (0: the rms
#: above grew to 0.018 at 0.5 FWHM and 0.027 at 1 FWHM, the model's wings farther out).
SATURATION_MARGIN_FWHM = 0.0


@dataclass(frozen=True)
class SaturationInputs:
    """What a saturated star's change is measured with: the science image and its PSF, the
    warped template in science units and its PSF (the template is never saturated)."""

    science: np.ndarray
    science_var: np.ndarray
    science_mask: np.ndarray
    science_psf: Psf
    template: np.ndarray
    template_var: np.ndarray
    template_psf: Psf


@dataclass(frozen=True)
class SaturatedChange:
    """A saturated star's change (``saturated_star_change``): the star (x, y, its template
    flux) and ``change`` ± ``change_err`` (the two fits' pixel noise)."""

    x: float
    y: float
    flux_template: float
    change: float
    change_err: float
    ok: bool

    def significance(self, noise_scale: float, eps: float) -> float:
        """change / √((s·σ_pix)² + (ε·F)²)."""
        s = noise_scale_or_one(noise_scale)
        return self.change / float(np.hypot(s * self.change_err, eps * abs(self.flux_template)))


_NO_CHANGE = SaturatedChange(np.nan, np.nan, np.nan, np.nan, np.nan, False)


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
    eps_bounds: tuple[float, float] = STAR_EPS_BOUNDS,
) -> np.ndarray:
    """Peaks (``PEAK_DTYPE``, footprint 0) of significant PSF-flux changes at known stars.

    ``star_x``, ``star_y``, ``star_flux``: stars measured on the science image (flux in the
    difference's units); ``pixel_variance``: the difference variance without the model term;
    ``existing``: the peaks already detected (a star within ``min_separation`` pixels of one
    is left to it). Only stars whose flux error grows by ≥ 10 % with the detection's ε are
    tried (elsewhere the detection already sees what the forced flux would). The model error
    is ``eps_psf`` within ``eps_bounds`` (the upper bound where it was not measured: NaN).
    """
    if not (diff.shape == pixel_variance.shape == mask.shape):
        raise ValueError("diff, pixel_variance and mask shapes differ")
    if not (len(star_x) == len(star_y) == len(star_flux)):
        raise ValueError("star_x, star_y and star_flux lengths differ")
    if len(star_x) == 0:
        return np.zeros(0, PEAK_DTYPE)
    lo, hi = eps_bounds
    eps = float(np.clip(eps_psf, lo, hi)) if np.isfinite(eps_psf) else hi
    s = noise_scale_or_one(noise_scale)
    ny, nx = diff.shape
    xs, ys = np.asarray(star_x, np.float64), np.asarray(star_y, np.float64)
    keep = np.isfinite(xs) & np.isfinite(ys) & np.isfinite(star_flux) & (star_flux > 0)
    if len(existing):
        tree = cKDTree(np.stack([existing["x"], existing["y"]], axis=1).astype(np.float64))
        d, _ = tree.query(np.stack([xs, ys], axis=1), distance_upper_bound=min_separation)
        keep &= ~np.isfinite(d)
    ix, iy = np.round(xs).astype(np.int64), np.round(ys).astype(np.int64)
    kern = psf.fit_kernel_at(nx / 2, ny / 2).astype(np.float64)
    h = kern.shape[0] // 2
    keep &= (ix - h >= 0) & (ix + h < nx) & (iy - h >= 0) & (iy + h < ny)
    idx = np.flatnonzero(keep)
    idx = idx[(mask[iy[idx], ix[idx]] & _BAD_CENTRE) == 0]
    if idx.size == 0:
        return np.zeros(0, PEAK_DTYPE)
    # PSF fluxes at the nearest pixel centre, all at once (a constant kernel, no sub-pixel
    # shift: off by ≤ 0.5 px it loses a few per cent of the change)
    off = np.arange(-h, h + 1)
    rows_i = (iy[idx, None] + off)[:, :, None]
    cols_i = (ix[idx, None] + off)[:, None, :]
    d = diff[rows_i, cols_i].astype(np.float64)
    v = pixel_variance[rows_i, cols_i].astype(np.float64)
    good = ((mask[rows_i, cols_i] & _BAD) == 0) & np.isfinite(v) & (v > 0) & np.isfinite(d)
    w = np.where(good, 1.0 / np.where(good, v, 1.0), 0.0)
    a = np.einsum("ij,nij->n", kern * kern, w)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.einsum("ij,nij->n", kern, np.where(good, d, 0.0) * w) / a
        pix = s / np.sqrt(a)
    f_star = np.asarray(star_flux, np.float64)[idx]
    # the detection's ε inflates these stars' errors by < 10 %: detection already sees them
    tried = (a > 0) & (eps_detection * f_star >= 0.46 * pix)
    static = np.maximum(f_star - f, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = f / np.hypot(pix, eps * static)
    hit = tried & np.isfinite(z) & (np.abs(z) >= 0.8 * threshold)
    for k in np.flatnonzero(hit).tolist():  # the few candidates: the PSF at their sub-pixel centre
        j = idx[k]
        fk, ek, _, nd, _ = forced_psf_flux(diff, pixel_variance, mask, psf, xs[j], ys[j], _BAD)
        if nd == 0 or not (np.isfinite(fk) and ek > 0):
            hit[k] = False
            continue
        z[k] = fk / np.hypot(s * ek, eps * max(f_star[k] - fk, 0.0))
        hit[k] = abs(z[k]) >= threshold
    half = int(np.ceil(min_separation))
    rows = [
        (0, x, y, zz, float(diff[y, x]), zz < 0, 0,
         max(x - half, 0), max(y - half, 0), min(x + half + 1, nx), min(y + half + 1, ny))
        for x, y, zz in zip(ix[idx][hit].tolist(), iy[idx][hit].tolist(), z[hit].tolist(),
                            strict=True)
    ]  # fmt: skip
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
    inputs: SaturationInputs | None = None,
    eps: float = EPS_SATURATED,
) -> tuple[np.ndarray, np.ndarray, list[SaturatedChange]]:
    """One peak at each saturated star that changed; the fragments it replaces; its change.

    A saturated core is zeroed before subtraction, so a variable saturated star leaves its
    change only in its wings, as fragments on a ring 1–2″ out (each more than 1″ from the
    star). Its centre is the centroid of the saturated region (charge bleeds up and down the
    column alike). Regions with a detected peak in their box (widened by 2 FWHM and its
    width) are tried. With ``inputs`` the change is measured on the two images
    (``saturated_star_change``) and is significant at ``threshold`` against its fits' noise
    and ``eps`` of the star's flux: a forced flux on the difference (the fallback, and the
    only test without ``inputs``) measures what the zeroed cores lost, 3–36 % of a static
    star's flux. The peaks of the change's polarity in the box are its fragments: their
    indices in ``existing`` come back to be replaced by the one peak.
    Regions touching the CCD edge are left alone (their centroid is not the star's).
    """
    from scipy import ndimage

    none: tuple[np.ndarray, np.ndarray, list[SaturatedChange]] = (
        np.zeros(0, PEAK_DTYPE),
        np.zeros(0, np.int64),
        [],
    )
    sat = (mask & mk.SAT) != 0
    if not sat.any():
        return none
    s = noise_scale_or_one(noise_scale)
    ny, nx = mask.shape
    b = 4  # regions are found on 4×4 blocks (cheap on a 4k CCD), centroids on their pixels
    labels, _ = ndimage.label(_blocks_any(sat, b), structure=np.ones((3, 3), bool))
    rows: list[tuple] = []
    replaced: list[int] = []
    changes: list[SaturatedChange] = []
    for box in ndimage.find_objects(labels):
        y0, y1 = box[0].start * b, min(box[0].stop * b, ny)
        x0, x1 = box[1].start * b, min(box[1].stop * b, nx)
        yy, xx = np.nonzero(sat[y0:y1, x0:x1])
        y0, y1, x0, x1 = y0 + yy.min(), y0 + yy.max() + 1, x0 + xx.min(), x0 + xx.max() + 1
        if y0 == 0 or x0 == 0 or y1 == ny or x1 == nx:
            continue
        x, y = x0 + float((xx - xx.min()).mean()), y0 + float((yy - yy.min()).mean())
        r = int(np.ceil(2.0 * fwhm + min(np.sqrt(yy.size), y1 - y0, x1 - x0)))
        in_box = (
            (existing["x"] >= x0 - r) & (existing["x"] < x1 + r)
            & (existing["y"] >= y0 - r) & (existing["y"] < y1 + r)
        )  # fmt: skip
        if not in_box.any():
            continue
        sc = _NO_CHANGE
        if inputs is not None:
            sc = saturated_star_change(inputs, mask, x, y, SATURATION_MARGIN_FWHM * fwhm)
        if sc.ok:
            z = sc.significance(noise_scale, eps)
        else:
            f, err, _, nd, _ = forced_psf_flux(diff, variance, mask, psf, x, y, _BAD)
            if nd == 0 or not (np.isfinite(f) and np.isfinite(err) and err > 0):
                continue
            z = f / (s * err)
        if abs(z) < threshold:
            continue
        near = in_box & (existing["negative"] == (z < 0))
        if not (sc.ok or near.any()):
            continue
        changes.append(sc)
        replaced += np.flatnonzero(near).tolist()
        ix, iy = round(x), round(y)
        rows.append(
            (0, ix, iy, float(z), float(diff[iy, ix]), bool(z < 0), 0,
             max(x0 - r, 0), max(y0 - r, 0), min(x1 + r, nx), min(y1 + r, ny))
        )  # fmt: skip
    if not rows:
        return none
    return np.array(rows, PEAK_DTYPE), np.unique(np.array(replaced, np.int64)), changes


def saturation_residuals(peaks: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Indices of the ``peaks`` centred on a saturated core or its SUSPECT surroundings
    (within 3 FWHM of a saturated pixel, ``mask.flag_saturation_surroundings``).

    What subtraction leaves there is the charge the clipped core and bleed trail lost, spread
    by the kernels, in both polarities and at any S/N (12–28 on mini); the PSF flux of a
    change of the saturated star itself (``saturated_star_peaks``, which replaces the star's
    fragments by one peak on its core) is the one measurement those pixels allow. Rubin's
    pipelines drop DIASources centred on saturated pixels in the same way.
    """
    if not len(peaks):
        return np.zeros(0, np.int64)
    centre = mask[peaks["y"], peaks["x"]]
    return np.flatnonzero((centre & (mk.SAT | mk.SUSPECT)) != 0)


def _blocks_any(a: np.ndarray, b: int) -> np.ndarray:
    """Whether each b×b block of the boolean ``a`` holds a True (4 bytes of a row at once)."""
    ny, nx = a.shape
    py, px = -ny % b, -nx % b
    if py or px or b != 4 or not a.flags.c_contiguous:
        a = np.ascontiguousarray(np.pad(a, ((0, py), (0, px))))
        if b != 4:
            return a.reshape(a.shape[0] // b, b, a.shape[1] // b, b).any(axis=(1, 3))
    rows = a.view(np.uint32).reshape(a.shape[0] // b, b, a.shape[1] // b)
    return rows.any(axis=1)


def recentre_on_saturated_stars(
    dia: np.ndarray,
    peaks: np.ndarray,
    science: np.ndarray,
    science_var: np.ndarray,
    science_mask: np.ndarray,
    science_psf: Psf,
    wcs: TanSipWcs,
    max_shift: float = 3.0,
) -> None:
    """Put the DIASources of ``saturated_star_peaks`` at their star, in place.

    On the difference only the change in the wings is left, with the subtraction's residuals
    around the zeroed core: its centroid is 0.6-1 px off. The star itself is fitted on the
    science image's unsaturated wings, where it is ten times brighter than its change.
    """
    if not len(dia) or not len(peaks):
        return
    for pk in peaks:
        px, py = float(pk["x"]), float(pk["y"])
        dist = np.hypot(dia["x"] - px, dia["y"] - py)
        j = int(np.argmin(dist))
        if dist[j] > max_shift:
            continue
        row = dia[j]
        fit = psf_fit(science, science_var, science_mask, science_psf, px, py, n_iter=4)
        if not fit.ok or np.hypot(fit.x - px, fit.y - py) > max_shift:
            continue
        row["x"], row["y"], row["xErr"], row["yErr"] = fit.x, fit.y, fit.x_err, fit.y_err
        ra, dec = wcs.pixel_to_sky(np.array([fit.x]), np.array([fit.y]))
        row["ra"], row["dec"] = float(ra[0]), float(dec[0])
        row["trailRa"], row["trailDec"] = float(ra[0]), float(dec[0])


def set_saturated_changes(
    dia: np.ndarray, changes: list[SaturatedChange], calibration: float,
    eps: float = EPS_SATURATED, max_offset: float = 1.0,
) -> None:  # fmt: skip
    """Give the DIASources of saturated stars (``pixelFlags_saturatedCenter``, placed at their
    star) the star's measured change as PSF flux, in place: the forced flux on the difference
    holds what the zeroed cores lost. The error is the fits' ⊕ ε·F_R."""
    if not len(dia) or not changes:
        return
    at_sat = np.flatnonzero(dia["pixelFlags_saturatedCenter"])
    for c in changes:
        if not c.ok or not at_sat.size:
            continue
        d = np.hypot(dia["x"][at_sat] - c.x, dia["y"][at_sat] - c.y)
        j = int(at_sat[np.argmin(d)])
        if d.min() > max_offset:
            continue
        dia["psfFlux"][j] = c.change * calibration
        dia["psfFluxErr"][j] = np.hypot(c.change_err, eps * c.flux_template) * calibration


def saturated_star_change(
    inputs: SaturationInputs, union_mask: np.ndarray, x: float, y: float, margin: float
) -> SaturatedChange:
    """The change of the saturated star near (x, y), from its two images, not the difference.

    Subtraction cannot measure it: the saturated pixels (SAT in the science image) are zeroed
    in both images before ZOGY, each image loses a different share of the star (different
    PSFs), and the kernels spread the difference into the wings, where a forced flux at a
    static saturated star found 3–36 % of its flux (comcam 101–103), while real changes of
    saturated variables are 4.5–16 %. The template is never saturated: its PSF flux F_R is
    as good as any star's. The science flux F_N is fitted on the star's unsaturated pixels
    (outside the saturated ones grown by ``margin``) with the whole science PSF, wings
    included, at the position fitted on those wings. ΔF = F_N − F_R; its error here is the
    two fits' pixel noise (the wing model's error is ``EPS_SATURATED``).
    """
    from scipy import ndimage

    im = inputs
    fit = psf_fit(im.science, im.science_var, im.science_mask, im.science_psf, x, y, 4,
                  _BAD | mk.SAT)  # fmt: skip
    if not (fit.ok and np.hypot(fit.x - x, fit.y - y) <= 3.0):
        return _NO_CHANGE
    x, y = fit.x, fit.y
    f_r, e_r, _, nd, _ = forced_psf_flux(im.template, im.template_var, None, im.template_psf, x, y)
    if nd == 0 or not np.isfinite(f_r):
        return _NO_CHANGE
    k = im.science_psf.kernel_at(x, y).astype(np.float64)
    h = k.shape[0] // 2
    ny, nx = union_mask.shape
    ix, iy = round(x), round(y)
    # the part of the PSF stamp on the CCD (a star near its edge keeps its inner wings)
    ya, yb, xa, xb = max(iy - h, 0), min(iy + h + 1, ny), max(ix - h, 0), min(ix + h + 1, nx)
    if yb - ya <= h or xb - xa <= h:
        return _NO_CHANGE
    box = np.s_[ya:yb, xa:xb]
    keep = (union_mask[box] & mk.SAT) == 0
    g = int(np.ceil(margin))
    if g > 0:
        disk = np.hypot(*np.mgrid[-g : g + 1, -g : g + 1]) <= margin
        keep = ~ndimage.binary_dilation(~keep, disk)
    use = keep & _usable(im.science[box], im.science_var[box], im.science_mask[box])
    p = _spline_shifted(k, x, y)[ya - iy + h : yb - iy + h, xa - ix + h : xb - ix + h]
    f_n, e_n = _linear_flux(im.science[box], im.science_var[box], p, use)
    if not (np.isfinite(f_n) and e_n > 0):
        return _NO_CHANGE
    return SaturatedChange(x, y, float(f_r), f_n - float(f_r), float(np.hypot(e_n, e_r)), True)


def _usable(img: np.ndarray, var: np.ndarray, msk: np.ndarray) -> np.ndarray:
    return ((msk & _BAD) == 0) & np.isfinite(var) & (var > 0) & np.isfinite(img)


def _linear_flux(
    d: np.ndarray, v: np.ndarray, p: np.ndarray, use: np.ndarray
) -> tuple[float, float]:
    return linear_flux(d, np.where(use, 1.0 / np.where(use, v, 1.0), 0.0), p)


def _spline_shifted(k: np.ndarray, x: float, y: float) -> np.ndarray:
    """``k`` (odd, centred) moved by the sub-pixel part of (x, y). A cubic spline, not
    ``fourier_shift``: the sinc shift of a peaked core rings at ~10⁻⁵ of the peak across the
    stamp, as large as the wings some FWHM out."""
    from scipy import ndimage

    dx, dy = x - round(x), y - round(y)
    if abs(dx) < 1e-3 and abs(dy) < 1e-3:
        return k
    return ndimage.shift(k, (dy, dx), order=3, mode="constant")
