"""A model-error term in a difference image's variance: what subtraction leaves of bright stars.

No PSF model, registration or photometric scaling is perfect; around a star of flux F the
difference keeps a residual of order ε·F shaped like the star (ZOGY's astrometric and
source-noise terms, Zackay, Ofek & Gal-Yam 2016 §3.3, are the same idea). Pixel noise does
not cover it, so bright stars sprout false detections and bright variables get PSF-flux errors
that are too small. The term added is ``(ε · S)² · 4πσ²`` where S is the template's static sky
smoothed at the PSF scale: the residual is coherent over the PSF, and the factor makes the
matched filter's variance (var ⊗ G² summed with weights 1/(4πσ²)) grow by (ε·S⊗G)².

ε is measured on each CCD: the smallest value for which the matched-filter significance on the
pixels near bright stars has the same robust spread as on the whole image.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from algorithms import mask as mk
from algorithms.fastconv import gaussian_smooth
from algorithms.measure import forced_psf_flux
from algorithms.psf import Psf

_BAD = mk.NO_DATA | mk.SAT | mk.BAD | mk.CR | mk.INTRP | mk.EDGE


def _robust_sigma(z: np.ndarray) -> float:
    if z.size < 20:
        return float("nan")
    return 1.4826 * float(np.median(np.abs(z - np.median(z))))


def _smooth_binned(static: np.ndarray, sigma: float) -> np.ndarray:
    """``static`` (clipped at 0) smoothed by a Gaussian of ``sigma``, computed on 2×2 bins
    (a variance term need not resolve finer than the PSF)."""
    ny, nx = static.shape
    py, px = ny % 2, nx % 2
    a = np.maximum(np.pad(static, ((0, py), (0, px)), mode="edge"), 0.0).astype(np.float32)
    binned = a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2).mean(axis=(1, 3))
    sm = gaussian_smooth(np.ascontiguousarray(binned, np.float32), 0.5 * sigma)
    return np.repeat(np.repeat(sm, 2, axis=0), 2, axis=1)[:ny, :nx]


def _tiles_near_stars(
    s_sub: np.ndarray, var_sub: np.ndarray, limit: float, tile: int, max_tiles: int, step: int
) -> list[tuple[int, int]]:
    """Origins (y, x) of the ``tile``² tiles where ``limit``·S reaches the pixel noise on
    grids subsampled by ``step`` (``limit`` = ε_max·√(4πσ²)), at most ``max_tiles`` of them
    spread evenly over the candidates ranked by how many such pixels they hold."""
    ok = np.isfinite(var_sub) & (var_sub > 0)
    near = ok & (limit * s_sub > np.sqrt(np.where(ok, var_sub, 1.0)))
    t = tile // step
    ny, nx = near.shape
    gy, gx = -(-ny // t), -(-nx // t)
    padded = np.zeros((gy * t, gx * t), bool)
    padded[:ny, :nx] = near
    counts = padded.reshape(gy, t, gx, t).sum(axis=(1, 3)).ravel()
    cand = np.flatnonzero(counts)
    cand = cand[np.argsort(-counts[cand], kind="stable")]
    if cand.size > max_tiles:
        cand = cand[np.linspace(0, cand.size - 1, max_tiles).round().astype(np.int64)]
    return [(int(k // gx) * tile, int(k % gx) * tile) for k in sorted(cand.tolist())]


def _samples(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    s: np.ndarray,
    psf_sigma: float,
    eps_max: float,
    boxes: list[tuple[int, int, int, int]],
    margin: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """On the boxes (y0, y1, x0, x1), smoothed with ``margin`` pixels around each: every 7th
    matched-filter significance (the reference spread), and the smoothed difference, its
    variance and S on the pixels near bright stars (where ε_max·S reaches the noise)."""
    ny, nx = image.shape
    n_eff = 4.0 * np.pi * psf_sigma**2
    z, d, v, sn = [], [], [], []
    for y0, y1, x0, x1 in boxes:
        ya, xa = max(y0 - margin, 0), max(x0 - margin, 0)
        yb, xb = min(y1 + margin, ny), min(x1 + margin, nx)
        m, var_b = mask[ya:yb, xa:xb], variance[ya:yb, xa:xb]
        good = ((m & _BAD) == 0) & np.isfinite(var_b) & (var_b > 0)
        vv = np.where(good, var_b, 0.0).astype(np.float32)
        vs = gaussian_smooth(vv, psf_sigma / np.sqrt(2.0), nearest=True) / n_eff
        ds = gaussian_smooth(np.where(good, image[ya:yb, xa:xb], 0.0).astype(np.float32),
                             psf_sigma)  # fmt: skip
        inner = np.s_[y0 - ya : y1 - ya, x0 - xa : x1 - xa]
        ok, vs, ds = good[inner] & (vs[inner] > 0), vs[inner], ds[inner]
        z.append(ds[ok][::7] / np.sqrt(vs[ok][::7]))
        sb = s[y0:y1, x0:x1]
        near = ok & (eps_max * sb > np.sqrt(np.where(ok, vs, 0.0)))
        d.append(ds[near])
        v.append(vs[near])
        sn.append(sb[near])
    return tuple(np.concatenate(a).astype(np.float64) for a in (z, d, v, sn))  # type: ignore[return-value]


def _solve_eps(
    z_all: np.ndarray, d_n: np.ndarray, v_n: np.ndarray, s_n: np.ndarray, eps_max: float,
    min_pixels: int,
) -> float:  # fmt: skip
    """The smallest ε ≤ ``eps_max`` for which the near-star significances d/√(v + (ε·S)²)
    have the robust spread of ``z_all``; 0 when they already do or are fewer than
    ``min_pixels``."""
    target = _robust_sigma(z_all)
    if not np.isfinite(target) or d_n.size < min_pixels:
        return 0.0

    def spread(eps: float) -> float:
        return _robust_sigma(d_n / np.sqrt(v_n + (eps * s_n) ** 2))

    if spread(0.0) <= target:
        return 0.0
    lo, hi = 0.0, eps_max
    if spread(hi) > target:
        lo = hi
    else:
        for _ in range(12):
            mid = 0.5 * (lo + hi)
            if spread(mid) > target:
                lo = mid
            else:
                hi = mid
    return hi if lo < eps_max else eps_max


def add_model_error(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    static: np.ndarray,
    psf_sigma: float,
    eps_max: float = 0.05,
    min_pixels: int = 50,
    max_box: int = 1024,
    tile: int = 128,
    max_tiles: int = 16,
) -> float:
    """Measure ε and add ``(ε·S)²·4πσ²`` to ``variance`` in place; returns ε (0 if none needed).

    ``static`` is the template as it enters the difference (science flux units). ε is
    measured on the central ``max_box``² pixels (enough stars on a crowded field, a fraction
    of the smoothing on a large CCD). Where that finds none (too few bright stars there to
    show a residual), it is measured on up to ``max_tiles`` ``tile``² tiles around the bright
    stars of the whole CCD: on comcam's sparser fields the central box held 0-2 bright stars,
    ε came out 0, and every bright star's subtraction residual was a detection (72 of 185
    false DIASources on the validation nights, all on such CCDs).
    """
    if not (image.shape == variance.shape == mask.shape == static.shape):
        raise ValueError("image, variance, mask and static shapes differ")
    if psf_sigma <= 0:
        raise ValueError("psf_sigma must be positive")
    s = _smooth_binned(static, psf_sigma)
    n_eff = 4.0 * np.pi * psf_sigma**2
    ny, nx = image.shape
    y0, x0 = max((ny - max_box) // 2, 0), max((nx - max_box) // 2, 0)
    box = (y0, min(y0 + max_box, ny), x0, min(x0 + max_box, nx))
    z_box, *near = _samples(image, variance, mask, s, psf_sigma, eps_max, [box], 0)
    eps = _solve_eps(z_box, *near, eps_max, min_pixels)
    if eps == 0.0:
        st = 4  # a bright star's near pixels span several of these cells
        origins = _tiles_near_stars(
            s[::st, ::st], variance[::st, ::st], eps_max * np.sqrt(n_eff), tile, max_tiles, st
        )
        tiles = [(y, min(y + tile, ny), x, min(x + tile, nx)) for y, x in origins]
        if tiles:
            margin = int(3.5 * psf_sigma + 0.5) + 1
            _, *near = _samples(image, variance, mask, s, psf_sigma, eps_max, tiles, margin)
            eps = _solve_eps(z_box, *near, eps_max, min_pixels)
    if eps > 0.0:
        variance += np.float32(eps**2 * n_eff) * s**2
    return float(eps)


def psf_flux_model_error(
    diff: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    psf: Psf,
    xs: np.ndarray,
    ys: np.ndarray,
    static_flux: np.ndarray,
    noise_scale: float = 1.0,
    eps_max: float = 0.05,
    min_stars: int = 10,
    max_stars: int = 150,
) -> float | None:
    """ε of a PSF flux on the difference: what subtraction leaves at the stars' own positions.

    ``add_model_error``'s ε flattens the significance *near* bright stars, wings included,
    where the PSF-shape error is largest; a PSF flux at a star's centre sees less of it (on
    comcam the flux errors of bright variables came out 2-6 times their scatter). Here the
    difference is measured by forced PSF photometry at the stars (``xs``, ``ys``, science
    flux ``static_flux``; ``variance`` without the model term) and ε is the smallest value for
    which the fluxes over ``sqrt((noise_scale·err)² + (ε·F)²)`` have a robust spread about
    zero (1.4826 × median |z|, so an offset counts too) of at most 1; variable stars are few
    and the median ignores them. None when fewer than ``min_stars`` stars are bright enough
    for ε to matter (ε_max·F above the pixel error); the ``max_stars`` brightest are used.
    """
    if not (diff.shape == variance.shape == mask.shape):
        raise ValueError("diff, variance and mask shapes differ")
    if not (len(xs) == len(ys) == len(static_flux)):
        raise ValueError("xs, ys and static_flux lengths differ")
    f, e, big = [], [], []
    order = np.argsort(-np.nan_to_num(np.asarray(static_flux, np.float64)))[:max_stars]
    for x, y, s in zip(xs[order].tolist(), ys[order].tolist(), static_flux[order].tolist(),
                       strict=True):  # fmt: skip
        fl, er, _, nd, trunc = forced_psf_flux(diff, variance, mask, psf, x, y, _BAD)
        if nd == 0 or trunc or not (np.isfinite(fl) and np.isfinite(er) and er > 0 and s > 0):
            continue
        f.append(fl)
        e.append(er * noise_scale)
        big.append(s)
    fa, ea, sa = np.asarray(f), np.asarray(e), np.asarray(big)
    use = eps_max * sa > ea
    if use.sum() < min_stars:
        return None
    fa, ea, sa = fa[use], ea[use], sa[use]

    def spread(eps: float) -> float:
        return 1.4826 * float(np.median(np.abs(fa) / np.sqrt(ea**2 + (eps * sa) ** 2)))

    if spread(0.0) <= 1.0:
        return 0.0
    if spread(eps_max) > 1.0:
        return eps_max
    lo, hi = 0.0, eps_max
    for _ in range(14):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if spread(mid) > 1.0 else (lo, mid)
    return hi


def noise_scale_or_one(noise_scale: float) -> float:
    """The measured noise scale of the difference image, or 1 where none could be measured
    (zero, negative or not finite): the factor its propagated errors are multiplied by."""
    return noise_scale if noise_scale > 0 and np.isfinite(noise_scale) else 1.0


def flux_positions_at_stars(
    x: np.ndarray,
    y: np.ndarray,
    diff_flux: np.ndarray,
    star_x: np.ndarray,
    star_y: np.ndarray,
    star_flux: np.ndarray,
    radius: float = 1.0,
    dominance: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Where to fit the PSF flux of each DIASource: at a static star's centroid when one lies
    within ``radius`` pixels and outshines the change ``dominance`` times, else where it is.

    A change at a bright star is centred on the difference where the star's subtraction
    residual (a registration dipole of a fraction of its flux) pulls it, 0.1-0.7 px away on
    comcam; a PSF flux fitted there misses part of the change (|flux| 3-10 % low on 16-18 mag
    variables). The star's science centroid is measured at far higher S/N, at the same place.
    ``diff_flux`` and ``star_flux`` are in the same units.
    """
    fx, fy = np.array(x, np.float64), np.array(y, np.float64)
    ok = np.isfinite(star_x) & np.isfinite(star_y) & np.isfinite(star_flux)
    if not ok.any() or not len(fx):
        return fx, fy
    sx, sy, sf = star_x[ok], star_y[ok], star_flux[ok]
    dist, j = cKDTree(np.stack([sx, sy], 1)).query(
        np.stack([fx, fy], 1), distance_upper_bound=radius
    )
    hit = np.isfinite(dist)
    jj = np.where(hit, j, 0)
    hit &= sf[jj] > dominance * np.abs(np.nan_to_num(np.asarray(diff_flux, np.float64)))
    fx[hit], fy[hit] = sx[jj[hit]], sy[jj[hit]]
    return fx, fy


def add_flux_model_error(dia: np.ndarray, eps: float) -> None:
    """psfFluxErr of the single-PSF DIASources ⊕ ε·|psfFlux|, in place (ε ≤ 0: unchanged).

    ε is the CCD's PSF-flux model error (``psf_flux_model_error``: what subtraction leaves of
    a static star, per unit of its flux). A PSF fit with an imperfect PSF model misses the
    same fraction of any point source's flux, so the change's own flux carries that error
    too, not only the static flux under it: without it the pulls of bright transients on
    blank sky widened with S/N (robust σ 1.45 at true S/N 50-100 on mini training nights).
    Dipole fits (their flux is a difference of two lobes) and failed fits are left alone.
    """
    if not (eps > 0 and np.isfinite(eps)) or not len(dia):
        return
    one = ~dia["dipoleFitAttempted"] & ~dia["psfFlux_flag"] & np.isfinite(dia["psfFlux"])
    f = dia["psfFlux"][one].astype(np.float64)
    e = dia["psfFluxErr"][one].astype(np.float64)
    dia["psfFluxErr"][one] = np.hypot(e, eps * np.abs(f)).astype(dia["psfFluxErr"].dtype)
