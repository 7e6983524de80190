"""Astrometric calibration: match to a reference catalogue, fit TAN-SIP, report residuals."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from algorithms.wcs import TanSipWcs, poly_design, poly_exponents, tan_deproject, tan_project


@dataclass
class AstrometryResult:
    wcs: TanSipWcs
    n_matched: int
    order: int
    rms_mas: float
    residuals_mas: np.ndarray
    matches: np.ndarray
    offset_pix: tuple[float, float]


def _find_offset(
    sx: np.ndarray, sy: np.ndarray, rx: np.ndarray, ry: np.ndarray, max_offset: float, bin_px: float
) -> tuple[float, float]:
    dx = (rx[None, :] - sx[:, None]).ravel()
    dy = (ry[None, :] - sy[:, None]).ravel()
    keep = (np.abs(dx) < max_offset) & (np.abs(dy) < max_offset)
    if not keep.any():
        raise ValueError("no source/reference pairs within the pointing uncertainty")
    nb = int(2 * max_offset / bin_px)
    hist, xe, ye = np.histogram2d(
        dx[keep], dy[keep], bins=nb, range=[[-max_offset, max_offset]] * 2
    )
    i, j = np.unravel_index(np.argmax(hist), hist.shape)
    cx, cy = 0.5 * (xe[i] + xe[i + 1]), 0.5 * (ye[j] + ye[j + 1])
    near = keep & (np.abs(dx - cx) < bin_px) & (np.abs(dy - cy) < bin_px)
    return float(np.median(dx[near])), float(np.median(dy[near]))


def _fit(
    x: np.ndarray,
    y: np.ndarray,
    ra: np.ndarray,
    dec: np.ndarray,
    crpix: tuple[float, float],
    crval: tuple[float, float],
    order: int,
    w: np.ndarray,
) -> TanSipWcs:
    exps = poly_exponents(order)
    u, v = x - crpix[0], y - crpix[1]
    scale = max(np.abs(u).max(), np.abs(v).max(), 1.0)
    for _ in range(3):
        xi, eta = tan_project(ra, dec, *crval)
        a = poly_design(u / scale, v / scale, exps) * w[:, None]
        ca = np.linalg.lstsq(a, xi * w, rcond=None)[0]
        cb = np.linalg.lstsq(a, eta * w, rcond=None)[0]
        crval = tuple(float(c) for c in tan_deproject(ca[0], cb[0], *crval))  # type: ignore[assignment]
    norm = {e: scale ** -(e[0] + e[1]) for e in exps}
    ca = np.array([c * norm[e] for c, e in zip(ca, exps, strict=True)])
    cb = np.array([c * norm[e] for c, e in zip(cb, exps, strict=True)])
    idx = {e: k for k, e in enumerate(exps)}
    cd = np.array([[ca[idx[(1, 0)]], ca[idx[(0, 1)]]], [cb[idx[(1, 0)]], cb[idx[(0, 1)]]]])
    inv = np.linalg.inv(cd)
    sip_a: dict[tuple[int, int], float] = {}
    sip_b: dict[tuple[int, int], float] = {}
    for e in exps:
        if e[0] + e[1] < 2:
            continue
        hi = inv @ np.array([ca[idx[e]], cb[idx[e]]])
        sip_a[e], sip_b[e] = float(hi[0]), float(hi[1])
    return TanSipWcs(crpix=crpix, crval=crval, cd=cd, sip_a=sip_a, sip_b=sip_b)


#: Prior widths of the nominal WCS's rotation (rad) and plate-scale errors when few stars
#: constrain them (the simulated camera's rotation error is 0.003°).
POINTING_PRIOR_ROTATION = np.deg2rad(0.01)
POINTING_PRIOR_SCALE = 2e-4


def _fit_pointing(
    x: np.ndarray, y: np.ndarray, ra: np.ndarray, dec: np.ndarray, initial: TanSipWcs,
    w: np.ndarray,
) -> TanSipWcs:  # fmt: skip
    """``initial`` corrected by a shift, and a rotation and scale about its tangent point.

    What a nominal WCS gets wrong is mostly the pointing; its distortion is the optics' and its
    rotation and scale are close. A free fit of a handful of stars extrapolates their centroid
    noise into the CCD's corners (mini: 220-260 mas at a corner from 8 stars); here the
    rotation and scale have Gaussian priors (``POINTING_PRIOR_*``) against the residual scatter
    of a shift-only fit, so few stars move only the shift.
    """
    wcs = initial
    for _ in range(3):
        xi_p, eta_p = tan_project(*wcs.pixel_to_sky(x, y), *wcs.crval)
        xi_r, eta_r = tan_project(ra, dec, *wcs.crval)
        dxi, deta = xi_r - xi_p, eta_r - eta_p
        use = w > 0
        sx = dxi[use] - np.mean(dxi[use])
        sy = deta[use] - np.mean(deta[use])
        sigma = max(float(np.sqrt(np.mean(sx**2 + sy**2) / 2)), 5.0 / 3.6e6)  # deg, ≥ 5 mas
        one, zero = np.ones_like(xi_p), np.zeros_like(xi_p)
        # dξ = a + s·ξ − θ·η, dη = b + s·η + θ·ξ (ξ, η in deg; s, θ dimensionless)
        rows = (
            np.concatenate(
                [np.stack([one, zero, xi_p, -eta_p], 1), np.stack([zero, one, eta_p, xi_p], 1)]
            )
            * np.concatenate([w, w])[:, None]
            / sigma
        )
        rhs = np.concatenate([dxi * w, deta * w]) / sigma
        prior = np.diag([0.0, 0.0, 1.0 / POINTING_PRIOR_SCALE, 1.0 / POINTING_PRIOR_ROTATION])
        sol = np.linalg.lstsq(np.vstack([rows, prior[2:]]), np.concatenate([rhs, [0.0, 0.0]]),
                              rcond=None)[0]  # fmt: skip
        sa, sb, ds, th = (float(v) for v in sol)
        c, sn = np.cos(th), np.sin(th)
        cd = (1.0 + ds) * np.array([[c, -sn], [sn, c]]) @ wcs.cd
        crval = tuple(float(v) for v in tan_deproject(sa, sb, *wcs.crval))
        wcs = TanSipWcs(wcs.crpix, crval, cd, dict(wcs.sip_a), dict(wcs.sip_b))  # type: ignore[arg-type]
    return wcs


def separation_mas(
    ra1: np.ndarray, dec1: np.ndarray, ra2: np.ndarray, dec2: np.ndarray
) -> np.ndarray:
    xi, eta = tan_project(ra2, dec2, float(np.mean(ra1)), float(np.mean(dec1)))
    xi0, eta0 = tan_project(ra1, dec1, float(np.mean(ra1)), float(np.mean(dec1)))
    return np.hypot(xi - xi0, eta - eta0) * 3.6e6


def fit_astrometry(
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    ref_ra: np.ndarray,
    ref_dec: np.ndarray,
    ref_flux: np.ndarray,
    initial: TanSipWcs,
    shape: tuple[int, int],
    max_offset_pix: float = 60.0,
    match_radius_pix: float = 1.5,
    min_matches: int = 5,
    max_order: int = 3,
    min_free_fit: int = 20,
) -> AstrometryResult:
    """Match sources to reference stars and fit a TAN-SIP WCS with 3σ clipping.

    The pointing offset is found from a histogram of all pairwise displacements between the
    brightest sources and references; an affine refit absorbs small rotations before the
    final match. The SIP order grows with the number of matches (1 → 3); below
    ``min_free_fit`` matches the initial WCS is only shifted, rotated and scaled
    (``_fit_pointing``, reported as order 0), since a free fit to so few stars extrapolates
    its noise into the CCD's corners.
    """
    if len(ref_ra) < min_matches:
        raise ValueError(f"only {len(ref_ra)} reference stars (need {min_matches})")
    if len(x) < min_matches:
        raise ValueError(f"only {len(x)} sources for astrometry (need {min_matches})")
    rx, ry = initial.sky_to_pixel(ref_ra, ref_dec)
    ny, nx = shape
    pad = max_offset_pix
    inr = (rx > -pad) & (rx < nx + pad) & (ry > -pad) & (ry < ny + pad)
    ridx = np.nonzero(inr)[0]
    if ridx.size < min_matches:
        raise ValueError(f"only {ridx.size} reference stars on the CCD (need {min_matches})")
    sb = np.argsort(-flux)[:150]
    rb = ridx[np.argsort(-ref_flux[ridx])][:150]
    ox, oy = _find_offset(x[sb], y[sb], rx[rb], ry[rb], max_offset_pix, 2.0)
    crpix = (0.5 * (nx - 1), 0.5 * (ny - 1))
    wcs = initial
    radius = 6.0
    tree_ref = None
    matches = np.zeros((0, 2), dtype=int)
    cx, cy = x + ox, y + oy
    for step in range(4):
        if step > 0:
            rx, ry = wcs.sky_to_pixel(ref_ra, ref_dec)
            cx, cy = x, y
        tree_ref = cKDTree(np.stack([rx[ridx], ry[ridx]], axis=1))
        dist, j = tree_ref.query(np.stack([cx, cy], axis=1), distance_upper_bound=radius)
        ok = np.isfinite(dist)
        si, rj = np.nonzero(ok)[0], ridx[j[ok]]
        _, first = np.unique(rj, return_index=True)
        si, rj = si[first], rj[first]
        if si.size < min_matches:
            raise ValueError(f"only {si.size} matched reference stars (need {min_matches})")
        if si.size < min_free_fit:
            order = 0
        else:
            order = 1 if (step == 0 or si.size < 20) else min(max_order, 2 if si.size < 60 else 3)
        w = np.ones(si.size)
        for _ in range(5):
            if order == 0:
                wcs = _fit_pointing(x[si], y[si], ref_ra[rj], ref_dec[rj], initial, w)
            else:
                wcs = _fit(x[si], y[si], ref_ra[rj], ref_dec[rj], crpix, initial.crval, order, w)
            fra, fdec = wcs.pixel_to_sky(x[si], y[si])
            res = separation_mas(ref_ra[rj], ref_dec[rj], fra, fdec)
            rms = np.sqrt(np.mean(res[w > 0] ** 2))
            # 2.5 × median distance ≈ 3σ for 2-D Gaussian residuals, robust to blends/mismatches
            cut = max(2.5 * float(np.median(res[w > 0])), 1.0)
            new_w = (res < cut).astype(float)
            if new_w.sum() < min_matches or np.array_equal(new_w, w):
                break
            w = new_w
        matches = np.stack([si, rj], axis=1)[w > 0]
        radius = max(match_radius_pix, 3.0 * rms / 1000.0 / wcs.pixel_scale()) if step else 3.0
    fra, fdec = wcs.pixel_to_sky(x[matches[:, 0]], y[matches[:, 0]])
    res = separation_mas(ref_ra[matches[:, 1]], ref_dec[matches[:, 1]], fra, fdec)
    return AstrometryResult(
        wcs=wcs,
        n_matched=int(matches.shape[0]),
        order=order,
        rms_mas=float(np.sqrt(np.mean(res**2))),
        residuals_mas=res,
        matches=matches,
        offset_pix=(ox, oy),
    )
