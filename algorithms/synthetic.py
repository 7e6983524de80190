"""Synthetic CCD visits with truth, for tests and benchmarks (pure numpy/numba, seeded).

The raw layout mirrors an LSSTCam-like CCD: 2 × 8 amplifiers, the top row read out from the
top (flipped in y), alternate columns flipped in x; each amp array has the data section,
then serial overscan columns, then parallel overscan rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np

from algorithms.geometry import AmpGeometry, CcdGeometry, Section
from algorithms.isr import Calibrations
from algorithms.wcs import TanSipWcs


@numba.njit(cache=True, nogil=True)
def render_moffat(
    img: np.ndarray, xs: np.ndarray, ys: np.ndarray, fluxes: np.ndarray,
    fwhm: np.ndarray, beta: float, radius_fwhm: float,
) -> None:  # fmt: skip
    """Add pixel-centre-sampled Moffat profiles (unit integral × flux) into ``img``."""
    ny, nx = img.shape
    for k in range(xs.size):
        alpha = fwhm[k] / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
        norm = fluxes[k] * (beta - 1.0) / (np.pi * alpha * alpha)
        r = int(radius_fwhm * fwhm[k]) + 1
        cx, cy = xs[k], ys[k]
        ix, iy = int(np.floor(cx + 0.5)), int(np.floor(cy + 0.5))
        for y in range(max(iy - r, 0), min(iy + r + 1, ny)):
            dy = y - cy
            for x in range(max(ix - r, 0), min(ix + r + 1, nx)):
                dx = x - cx
                img[y, x] += norm * (1.0 + (dx * dx + dy * dy) / (alpha * alpha)) ** (-beta)


@numba.njit(cache=True, nogil=True)
def bleed(img: np.ndarray, full_well: float) -> None:
    """Spill charge above ``full_well`` up and down the column (bleed trails)."""
    ny, nx = img.shape
    for x in range(nx):
        for y in range(ny):
            if img[y, x] > full_well:
                excess = img[y, x] - full_well
                img[y, x] = full_well
                up, dn = 0.5 * excess, 0.5 * excess
                yy = y + 1
                while up > 0 and yy < ny:
                    room = full_well - img[yy, x]
                    take = min(room, up) if room > 0 else 0.0
                    img[yy, x] += take
                    up -= take
                    yy += 1
                yy = y - 1
                while dn > 0 and yy >= 0:
                    room = full_well - img[yy, x]
                    take = min(room, dn) if room > 0 else 0.0
                    img[yy, x] += take
                    dn -= take
                    yy -= 1


def moffat_kernel(fwhm: float, beta: float, size: int) -> np.ndarray:
    k = np.zeros((size, size))
    c = float(size // 2)
    render_moffat(k, np.array([c]), np.array([c]), np.array([1.0]), np.array([fwhm]), beta, 50.0)
    return k / k.sum()


@dataclass(frozen=True)
class SimConfig:
    nx: int = 512
    ny: int = 512
    amps_x: int = 2
    amps_y: int = 2
    serial_overscan: int = 32
    parallel_overscan: int = 16
    pixel_scale: float = 0.2
    fwhm_science: float = 0.80
    fwhm_template: float = 0.70
    psf_gradient: float = 0.02
    beta: float = 3.5
    sky: float = 1000.0
    exptime: float = 30.0
    gain: float = 1.6
    read_noise: float = 6.0
    bias_adu: float = 20000.0
    dark_rate: float = 0.02
    full_well: float = 70000.0
    star_density: float = 1.2e-3
    mag_range: tuple[float, float] = (15.0, 25.0)
    zp_e: float = 32.1
    n_transients: int = 40
    transient_snr: tuple[float, float] = (4.0, 40.0)
    n_cosmic_rays: int = 20
    n_bad_columns: int = 2
    n_hot_pixels: int = 20
    crosstalk: float = 2e-4
    pointing_error_arcsec: float = 1.5
    rotation_error_deg: float = 0.03
    distortion: float = 1.0
    template_depth: float = 3.0
    template_offset_pix: tuple[float, float] = (7.3, -4.6)
    template_rotation_deg: float = 0.2
    ra: float = 150.0
    dec: float = -30.0
    bright_star: bool = True
    seed: int = 1


@dataclass
class SimVisit:
    raw_amps: list[np.ndarray | None]
    geometry: CcdGeometry
    calibs: Calibrations
    exptime: float
    true_wcs: TanSipWcs
    initial_wcs: TanSipWcs
    ref_ra: np.ndarray
    ref_dec: np.ndarray
    ref_flux: np.ndarray
    template_image: np.ndarray
    template_variance: np.ndarray
    template_wcs: TanSipWcs
    template_psf: np.ndarray
    science_psf_centre: np.ndarray
    calibration: float
    truth_stars: dict[str, np.ndarray]
    truth_transients: dict[str, np.ndarray]
    truth_crs: np.ndarray
    config: SimConfig = field(default_factory=SimConfig)


def make_geometry(cfg: SimConfig) -> CcdGeometry:
    ax, ay = cfg.nx // cfg.amps_x, cfg.ny // cfg.amps_y
    amps = []
    for j in range(cfg.amps_y):
        for i in range(cfg.amps_x):
            flip_x = i % 2 == 1
            flip_y = j == 1
            amps.append(
                AmpGeometry(
                    name=f"C{j}{i}",
                    data=Section(0, ax, 0, ay),
                    serial_overscan=Section(ax, ax + cfg.serial_overscan, 0, ay),
                    parallel_overscan=Section(
                        0, ax + cfg.serial_overscan, ay, ay + cfg.parallel_overscan
                    ),
                    detector=Section(i * ax, (i + 1) * ax, j * ay, (j + 1) * ay, flip_x, flip_y),
                    gain=cfg.gain * (1 + 0.03 * ((i + j) % 3 - 1)),
                    read_noise=cfg.read_noise,
                    saturation=cfg.bias_adu + 0.9 * cfg.full_well / cfg.gain,
                )
            )
    return CcdGeometry.from_amps(amps)


def _true_wcs(cfg: SimConfig) -> TanSipWcs:
    base = TanSipWcs.simple(
        (cfg.ra, cfg.dec), ((cfg.nx - 1) / 2, (cfg.ny - 1) / 2), cfg.pixel_scale, 0.0
    )
    q, c = 1.2e-7 * cfg.distortion, 1.2e-10 * cfg.distortion
    return TanSipWcs(
        crpix=base.crpix,
        crval=base.crval,
        cd=base.cd,
        sip_a={(2, 0): q, (1, 1): -0.5 * q, (3, 0): c},
        sip_b={(0, 2): q, (1, 1): 0.3 * q, (0, 3): -c},
    )


def make_visit(cfg: SimConfig | None = None) -> SimVisit:
    """A science raw, its calibrations, a deeper template, a reference catalogue and truth."""
    cfg = cfg or SimConfig()
    rng = np.random.default_rng(cfg.seed)
    ny, nx = cfg.ny, cfg.nx
    geom = make_geometry(cfg)
    wcs = _true_wcs(cfg)
    cal = 10 ** ((31.4 - cfg.zp_e) / 2.5)
    fw_s = cfg.fwhm_science / cfg.pixel_scale
    fw_t = cfg.fwhm_template / cfg.pixel_scale
    pad = 60
    n_stars = rng.poisson(cfg.star_density * (nx + 2 * pad) * (ny + 2 * pad))
    u = rng.random(n_stars)
    m0, m1 = cfg.mag_range
    mags = m0 + np.log10(1 + u * (10 ** (0.35 * (m1 - m0)) - 1)) / 0.35
    sx = rng.uniform(-pad, nx + pad, n_stars)
    sy = rng.uniform(-pad, ny + pad, n_stars)
    if cfg.bright_star:
        mags[0], sx[0], sy[0] = 12.5, 0.37 * nx, 0.61 * ny
    fnjy = 10 ** ((31.4 - mags) / 2.5)
    ra, dec = wcs.pixel_to_sky(sx, sy)
    fwhm_map = fw_s * (
        1 + cfg.psf_gradient * (sx / nx - 0.5) + 0.5 * cfg.psf_gradient * (sy / ny - 0.5)
    )
    kernel = moffat_kernel(fw_s, cfg.beta, 41)
    neff = 1.0 / (kernel**2).sum()
    # transients: positive, away from bright stars, edges and each other
    sig_s = np.sqrt(cfg.sky + cfg.read_noise**2)
    sig_t = sig_s / cfg.template_depth
    bright = fnjy / cal > 2e4
    tx, ty, tsnr = [], [], []
    while len(tx) < cfg.n_transients:
        x, y = rng.uniform(25, nx - 25), rng.uniform(25, ny - 25)
        if np.any(np.hypot(sx[bright] - x, sy[bright] - y) < 12 + 40 * (fnjy[bright] / cal > 1e6)):
            continue
        if tx and np.min(np.hypot(np.array(tx) - x, np.array(ty) - y)) < 20:
            continue
        tx.append(x)
        ty.append(y)
        tsnr.append(np.exp(rng.uniform(*np.log(cfg.transient_snr))))
    tx_a, ty_a, tsnr_a = np.array(tx), np.array(ty), np.array(tsnr)
    tflux_e = tsnr_a * np.sqrt(neff * (sig_s**2 + sig_t**2))
    tfwhm = fw_s * (
        1 + cfg.psf_gradient * (tx_a / nx - 0.5) + 0.5 * cfg.psf_gradient * (ty_a / ny - 0.5)
    )
    # science electrons
    img = np.full((ny, nx), cfg.sky, dtype=np.float64)
    render_moffat(img, sx, sy, fnjy / cal, fwhm_map, cfg.beta, 8.0)
    render_moffat(img, tx_a, ty_a, tflux_e, tfwhm, cfg.beta, 8.0)
    flat = 1 + 0.02 * np.sin(np.arange(nx) / 97.0)[None, :] + 0.01 * rng.standard_normal((ny, nx))
    img *= flat
    img += cfg.dark_rate * cfg.exptime
    img = img + np.sqrt(np.maximum(img, 0)) * rng.standard_normal((ny, nx))
    crs = []
    for _ in range(cfg.n_cosmic_rays):
        x, y = rng.uniform(5, nx - 5), rng.uniform(5, ny - 5)
        length, ang = rng.uniform(1, 8), rng.uniform(0, np.pi)
        amp = rng.uniform(1500, 15000)
        for t in np.linspace(0, length, max(int(length * 2), 1)):
            img[int(y + t * np.sin(ang)), int(x + t * np.cos(ang))] += amp
        crs.append((x, y))
    defects = np.zeros((ny, nx), dtype=bool)
    for c in rng.integers(10, nx - 10, cfg.n_bad_columns):
        defects[:, c] = True
        img[:, c] = img[:, c] * 0.05
    hy, hx = rng.integers(0, ny, cfg.n_hot_pixels), rng.integers(0, nx, cfg.n_hot_pixels)
    defects[hy, hx] = True
    img[hy, hx] += 30000.0
    bias = 3.0 * np.sin(np.arange(ny) / 50.0)[:, None] + np.zeros((1, nx))
    img += bias
    bleed(img, cfg.full_well)
    raws = _to_raw(img, geom, cfg, rng)
    calibs = Calibrations(
        bias=bias.astype(np.float32),
        dark=np.full((ny, nx), cfg.dark_rate, dtype=np.float32),
        flat=flat.astype(np.float32),
        defects=defects,
        crosstalk=_crosstalk_matrix(len(geom.amps), cfg.crosstalk),
    )
    dra = cfg.pointing_error_arcsec / 3600.0 / np.cos(np.deg2rad(cfg.dec))
    ddec = -0.7 * cfg.pointing_error_arcsec / 3600.0
    centre = ((nx - 1) / 2, (ny - 1) / 2)
    initial = TanSipWcs.simple(
        (cfg.ra + dra, cfg.dec + ddec), centre, cfg.pixel_scale * 1.0003, cfg.rotation_error_deg
    )
    tcentre = (centre[0] + cfg.template_offset_pix[0], centre[1] + cfg.template_offset_pix[1])
    tmpl_wcs = TanSipWcs.simple(
        (cfg.ra, cfg.dec), tcentre, cfg.pixel_scale, cfg.template_rotation_deg
    )
    tsx, tsy = tmpl_wcs.sky_to_pixel(ra, dec)
    timg = np.zeros((ny, nx), dtype=np.float64)
    render_moffat(timg, tsx, tsy, fnjy, np.full(n_stars, fw_t), cfg.beta, 8.0)
    tvar = np.full((ny, nx), (sig_t * cal) ** 2) + timg * cal / cfg.template_depth**2
    timg += np.sqrt(tvar) * rng.standard_normal((ny, nx))
    refsel = mags < 22.0
    return SimVisit(
        raw_amps=raws,
        geometry=geom,
        calibs=calibs,
        exptime=cfg.exptime,
        true_wcs=wcs,
        initial_wcs=initial,
        ref_ra=ra[refsel] + rng.normal(0, 5e-3 / 3600, refsel.sum()) / np.cos(np.deg2rad(cfg.dec)),
        ref_dec=dec[refsel] + rng.normal(0, 5e-3 / 3600, refsel.sum()),
        ref_flux=fnjy[refsel] * (1 + rng.normal(0, 0.005, refsel.sum())),
        template_image=timg.astype(np.float32),
        template_variance=tvar.astype(np.float32),
        template_wcs=tmpl_wcs,
        template_psf=moffat_kernel(fw_t, cfg.beta, 31),
        science_psf_centre=kernel,
        calibration=cal,
        truth_stars={"x": sx, "y": sy, "flux": fnjy, "ra": ra, "dec": dec},
        truth_transients={
            "x": tx_a,
            "y": ty_a,
            "flux": tflux_e * cal,
            "snr": tsnr_a,
            "ra": wcs.pixel_to_sky(tx_a, ty_a)[0],
            "dec": wcs.pixel_to_sky(tx_a, ty_a)[1],
        },
        truth_crs=np.array(crs),
        config=cfg,
    )


def _crosstalk_matrix(n: int, c: float) -> np.ndarray:
    m = np.full((n, n), 0.2 * c)
    for i in range(n - 1):
        m[i, i + 1] = m[i + 1, i] = c
    np.fill_diagonal(m, 0.0)
    return m


def _to_raw(
    img: np.ndarray, geom: CcdGeometry, cfg: SimConfig, rng: np.random.Generator
) -> list[np.ndarray | None]:
    amps_e = []
    for a in geom.amps:
        d = img[a.detector.slices]
        if a.detector.flip_x:
            d = d[:, ::-1]
        if a.detector.flip_y:
            d = d[::-1, :]
        amps_e.append(np.ascontiguousarray(d))
    xt = _crosstalk_matrix(len(amps_e), cfg.crosstalk)
    stack = np.stack(amps_e)
    with_xt = stack + np.tensordot(xt, stack, axes=1)
    raws: list[np.ndarray | None] = []
    for k, a in enumerate(geom.amps):
        ay, ax = a.data.ny, a.data.nx
        h = ay + cfg.parallel_overscan
        w = ax + cfg.serial_overscan
        level = cfg.bias_adu + 50 * k
        drift = 4.0 * np.sin(np.arange(h) / 37.0 + k)[:, None]
        raw = np.full((h, w), level, dtype=np.float64) + drift
        raw[:ay, :ax] += with_xt[k] / a.gain
        raw += rng.normal(0.0, a.read_noise / a.gain, raw.shape)
        raws.append(np.clip(np.round(raw), 0, 65535).astype(np.float32))
    return raws
