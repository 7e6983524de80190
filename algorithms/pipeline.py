"""The per-CCD chain: raw amplifiers → calibrated exposure → difference image → DIASources."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from algorithms import mask as mk
from algorithms.alard_lupton import alard_lupton_subtract
from algorithms.astrometry import AstrometryResult, fit_astrometry
from algorithms.background import BackgroundModel, fit_background
from algorithms.ccd_border import border_peaks
from algorithms.cosmicray import drop_repaired_centres, find_cosmic_rays
from algorithms.cutouts import Cutout, Plane, make_cutouts
from algorithms.detection import PEAK_DTYPE, detect_sources, drop_noise_peaks
from algorithms.diasource import DIASOURCE_DTYPE, DiaImages, measure_diasources
from algorithms.dipole import drop_registration_dipoles
from algorithms.geometry import CcdGeometry
from algorithms.image_sanity import image_sanity
from algorithms.interp import interpolate_masked
from algorithms.isr import Calibrations, IsrConfig, run_isr
from algorithms.measure import forced_psf_flux, psf_fit
from algorithms.model_noise import (
    add_flux_model_error,
    add_model_error,
    flux_positions_at_stars,
    noise_scale_or_one,
    psf_flux_model_error,
)
from algorithms.photocal import PhotoCalib, fit_zeropoint
from algorithms.psf import (
    KernelPsf,
    Psf,
    PsfFitResult,
    fit_psf,
    gaussian_kernel,
    select_psf_stars,
)
from algorithms.psf_wings import extend_kernel
from algorithms.star_changes import (
    SaturatedChange,
    SaturationInputs,
    recentre_on_saturated_stars,
    saturated_star_peaks,
    saturation_residuals,
    set_saturated_changes,
    star_change_peaks,
)
from algorithms.star_residual import drop_star_residuals, fill_star_columns
from algorithms.warp import warp_image
from algorithms.wcs import TanSipWcs
from algorithms.zogy import ZogyResult, scale_variance, zogy_subtract


@dataclass(frozen=True)
class ExposureInfo:
    visit: int
    detector: int
    exptime: float
    initial_wcs: TanSipWcs
    band: str = "r"
    nominal_calibration: float | None = None
    seeing_fwhm_pix: float | None = None


@dataclass(frozen=True)
class ReferenceCatalog:
    ra: np.ndarray
    dec: np.ndarray
    flux: np.ndarray


@dataclass(frozen=True)
class Template:
    """A background-subtracted coadd in ``calibration`` nJy per unit, with its PSF kernel."""

    image: np.ndarray
    variance: np.ndarray
    wcs: TanSipWcs
    psf: np.ndarray
    calibration: float = 1.0
    mask: np.ndarray | None = None


@dataclass(frozen=True)
class PipelineConfig:
    detection_threshold: float = 5.0
    dia_threshold: float = 5.0
    #: Noise peaks of either sign a difference image may give, by the Gaussian-field count
    #: (``detection.false_alarm_threshold``, an upper bound): on a 4k×4k comcam CCD peaks
    #: off stars need ~5.5σ (5σ let through ~1.5 noise peaks per CCD, a third of the false
    #: DIASources; ``detection.drop_noise_peaks``); small CCDs keep ``dia_threshold``.
    #: None: ``dia_threshold`` everywhere.
    dia_max_false_peaks: float | None = 0.3
    background_cell: int = 256
    initial_psf_sigma: float = 2.0
    psf_star_snr: float = 25.0
    #: A sparse CCD's PSF is a constant model (spatial terms need >= 80 stars); two clean
    #: stars fit it far better than the Gaussian fallback, whose wrong profile left residuals
    #: of 30-50 % of every bright star's flux in the difference (false DIASources in a ring).
    psf_min_stars: int = 2
    astrometry_stars: int = 400
    astrometry_min_snr: float = 25.0
    min_reference_stars: int = 5
    max_bad_fraction: float = 0.5
    min_template_coverage: float = 0.5
    aperture_radius: float = 12.0
    fft_workers: int = 1
    subtraction: str = "zogy"
    max_model_error: float = 0.015
    #: Forced PSF fluxes on the difference at the measured stars find changes of bright
    #: stars that the detection's model-error variance hides (``algorithms.star_changes``).
    star_changes: bool = True
    #: Drop detections centred on saturated cores, bleed trails and their SUSPECT
    #: surroundings (``star_changes.saturation_residuals``): subtraction cannot model them.
    drop_saturation_residuals: bool = True
    #: Drop detections peaking on the CCD's outermost row or column
    #: (``ccd_border.border_peaks``): their source is centred beyond the edge.
    drop_border_peaks: bool = True
    #: Drop DIASources the dipole fit calls registration artefacts (``isDipole``).
    drop_registration_dipoles: bool = True
    #: Drop DIASources within one FWHM of a measured star whose |psfFlux| and forced PSF flux
    #: at the star are both below this fraction of the star's flux
    #: (``star_residual.drop_star_residuals``): what the PSF model leaves of a static star.
    #: 2 %: over twice the largest such residual measured at static comcam stars < 18 mag
    #: (0.86-0.89 %; docs/alert_quality.md). None: keep them.
    star_residual_fraction: float | None = 0.02
    #: Drop DIASources centred on a repaired cosmic-ray pixel
    #: (``cosmicray.drop_repaired_centres``): the difference there measures the repair.
    drop_cosmic_ray_repairs: bool = True
    al_kernel_size: int = 21
    al_spatial_order: int = 1
    al_min_snr: float = 30.0
    al_max_stamps: int = 300
    make_cutouts: bool = True
    psf_fallback: bool = True
    isr: IsrConfig = field(default_factory=IsrConfig)


@dataclass
class CcdResult:
    """Every product of ``run_ccd``; ``ok`` is False when a stage could not run (see flags)."""

    ok: bool
    flags: list[str]
    timings: dict[str, float]
    image: np.ndarray | None = None
    variance: np.ndarray | None = None
    mask: np.ndarray | None = None
    background: BackgroundModel | None = None
    psf: Psf | None = None
    wcs: TanSipWcs | None = None
    astrometry: AstrometryResult | None = None
    photocalib: PhotoCalib | None = None
    sources: np.ndarray | None = None
    template: Plane | None = None
    difference: ZogyResult | None = None
    diasources: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=DIASOURCE_DTYPE))
    cutouts: list[dict[str, Cutout]] = field(default_factory=list)
    summary: dict[str, float | int | str] = field(default_factory=dict)
    cpu_timings: dict[str, float] = field(default_factory=dict)


class _Timer:
    """Wall-clock and CPU (process) seconds per stage; CPU time is what a shared machine
    does not disturb."""

    def __init__(self, on_stage: Callable[[str], None] | None = None) -> None:
        self.timings: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.on_stage = on_stage

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c0
        if self.on_stage is not None:
            self.on_stage(name)


def _fallback_psf(locus_sigma: float, exposure: ExposureInfo, default: float) -> PsfFitResult:
    """A Gaussian PSF for fields too sparse to model one (flagged ``psf_fallback``): its width
    is the stellar locus of the few stars found, else the exposure's nominal seeing."""
    sigma = locus_sigma
    if not np.isfinite(sigma):
        sigma = exposure.seeing_fwhm_pix / 2.3548 if exposure.seeing_fwhm_pix else default
    size = int(np.clip(2 * np.ceil(3.0 * 2.3548 * sigma) + 1, 15, 51))
    psf = KernelPsf(gaussian_kernel(sigma, size))
    s = psf.sigma_at(0, 0)
    empty = np.zeros(0, dtype=int)
    return PsfFitResult(psf=psf, stars=empty, used=np.zeros(0, bool), sigma=s, fwhm=2.3548 * s,
                        residual_rms=float("nan"))  # fmt: skip


STAR_DTYPE = np.dtype(
    [("x", "f8"), ("y", "f8"), ("xErr", "f4"), ("yErr", "f4"), ("flux", "f8"), ("fluxErr", "f8"),
     ("chi2", "f4"), ("ndata", "i4"), ("ok", "?")]
)  # fmt: skip


def _measure_stars(
    img: np.ndarray, var: np.ndarray, msk: np.ndarray, psf: Psf, peaks: np.ndarray
) -> np.ndarray:
    out = np.zeros(len(peaks), dtype=STAR_DTYPE)
    for k, p in enumerate(peaks):
        f = psf_fit(img, var, msk, psf, float(p["x"]), float(p["y"]), n_iter=3)
        out[k] = (f.x, f.y, f.x_err, f.y_err, f.flux, f.flux_err, f.chi2, f.ndata, f.ok)
    return out


def _astrometry(
    stars: np.ndarray,
    refcat: ReferenceCatalog,
    wcs: TanSipWcs,
    shape: tuple[int, int],
    cfg: PipelineConfig,
) -> tuple[AstrometryResult, np.ndarray]:
    """Fit with high-S/N stars (centroid noise ≪ 50 mas); fall back to all if too few match."""
    snr = stars["flux"] / stars["fluxErr"]
    args = (refcat.ra, refcat.dec, refcat.flux, wcs, shape)
    bright = stars[snr >= cfg.astrometry_min_snr]
    if len(bright) >= 3 * cfg.min_reference_stars:
        try:
            res = fit_astrometry(bright["x"], bright["y"], bright["flux"], *args,
                                 min_matches=cfg.min_reference_stars)  # fmt: skip
            if res.n_matched >= 2 * cfg.min_reference_stars:
                return res, bright
        except ValueError:
            pass
    res = fit_astrometry(
        stars["x"], stars["y"], stars["flux"], *args, min_matches=cfg.min_reference_stars
    )
    return res, stars


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


def run_ccd(
    raw_amps: Sequence[np.ndarray | None],
    geometry: CcdGeometry,
    calibs: Calibrations,
    exposure: ExposureInfo,
    refcat: ReferenceCatalog,
    template: Template | None,
    config: PipelineConfig | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> CcdResult:
    """Process one CCD. Never raises on bad data: problems end up in ``flags``.

    ``on_stage(name)`` is called as each stage completes (it does not run if the stage
    raised), so a caller can time-stamp milestones such as the end of ISR.
    """
    cfg = config or PipelineConfig()
    t = _Timer(on_stage)
    res = CcdResult(ok=False, flags=[], timings=t.timings, cpu_timings=t.cpu)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        _run(raw_amps, geometry, calibs, exposure, refcat, template, cfg, t, res)
    except ValueError as e:
        res.flags.append(f"failed:{e}")
        res.ok = False
    t.timings["total"] = time.perf_counter() - t0
    t.cpu["total"] = time.process_time() - c0
    res.summary.update(n_diasources=len(res.diasources), flags=";".join(res.flags))
    return res


def _run(
    raw_amps: Sequence[np.ndarray | None], geometry: CcdGeometry, calibs: Calibrations,
    exposure: ExposureInfo, refcat: ReferenceCatalog, template: Template | None,
    cfg: PipelineConfig, t: _Timer, res: CcdResult,
) -> None:  # fmt: skip
    present = [(a, g) for a, g in zip(raw_amps, geometry.amps, strict=False) if a is not None]
    if present and all(np.nanmax(a) == np.nanmin(a) for a, _ in present):
        sat = all(np.nanmax(a) >= g.saturation for a, g in present)
        res.flags.append("saturated_image:1.00" if sat else "all_zero_or_constant_image")
        return
    with t.stage("isr"):
        isr = run_isr(raw_amps, geometry, calibs, exposure.exptime, cfg.isr)
    res.flags += isr.flags
    img, var, msk = isr.image, isr.variance, isr.mask
    res.image, res.variance, res.mask = img, var, msk
    reason = image_sanity(img, msk, cfg.max_bad_fraction)
    if reason:
        res.flags.append(reason)
        return
    with t.stage("background"):
        bkg = fit_background(img, msk, cfg.background_cell)
        sub = img - bkg.evaluate()
    with t.stage("detection"):
        det = detect_sources(sub, var, msk, cfg.initial_psf_sigma, cfg.detection_threshold)
    with t.stage("cosmic_rays"):
        pk = det.peaks
        _, locus = select_psf_stars(
            sub, msk, pk["x"], pk["y"], pk["significance"], 25, cfg.psf_star_snr, 60
        )
        sigma0 = locus if np.isfinite(locus) else cfg.initial_psf_sigma
        ncr = find_cosmic_rays(sub, var, 0.0, msk, sigma0)
        interpolate_masked(sub, msk, mk.CR | mk.BAD)
        res.summary["n_cosmic_rays"] = ncr
    with t.stage("background"):
        bkg = fit_background(img, msk, cfg.background_cell)
        model = bkg.evaluate()
        img -= model
        interpolate_masked(img, msk, mk.CR | mk.BAD)
        del sub
        res.background = bkg
        res.summary["background_median"] = float(np.median(bkg.values))
    with t.stage("psf"):
        try:
            pfit = fit_psf(
                img, var, msk, pk["x"], pk["y"], pk["significance"], min_stars=cfg.psf_min_stars,
                min_snr=cfg.psf_star_snr, labels=det.labels,
            )  # fmt: skip
        except ValueError as e:
            if not cfg.psf_fallback:
                res.flags.append(f"psf_failed:{e}")
                return
            pfit = _fallback_psf(locus, exposure, cfg.initial_psf_sigma)
            res.flags.append(f"psf_fallback:{e}")
        psf = pfit.psf
        res.psf = psf
        res.summary.update(psf_fwhm_pix=pfit.fwhm, psf_nstars=int(pfit.used.sum()))
    with t.stage("measure_stars"):
        usable = (msk[pk["y"], pk["x"]] & (mk.SAT | mk.NO_DATA | mk.CR)) == 0
        bright = pk[usable & (pk["significance"] >= 10.0)]
        bright = bright[np.argsort(-bright["significance"])][: cfg.astrometry_stars]
        stars = _measure_stars(img, var, msk, psf, bright)
        stars = stars[stars["ok"] & (stars["flux"] > 10.0 * stars["fluxErr"])]
        res.sources = stars
    wcs = exposure.initial_wcs
    with t.stage("astrometry"):
        try:
            ast, astars = _astrometry(stars, refcat, wcs, img.shape, cfg)
            wcs = ast.wcs
            res.astrometry = ast
            res.summary.update(astrom_rms_mas=ast.rms_mas, astrom_n_matched=ast.n_matched)
        except ValueError as e:
            res.flags.append(f"astrometry_failed:{e}")
            ast = None
    res.wcs = wcs
    with t.stage("photocal"):
        calib = exposure.nominal_calibration
        if ast is not None:
            try:
                pc = fit_zeropoint(
                    astars["flux"][ast.matches[:, 0]], astars["fluxErr"][ast.matches[:, 0]],
                    refcat.flux[ast.matches[:, 1]],
                )  # fmt: skip
                res.photocalib, calib = pc, pc.calibration
                res.summary["zeropoint"] = pc.zeropoint
            except ValueError as e:
                res.flags.append(f"photocal_failed:{e}")
        if calib is None:
            res.flags.append("no_photometric_calibration")
            return
    if template is None:
        res.flags.append("no_template")
        return
    with t.stage("warp"):
        tmask = (
            template.mask
            if template.mask is not None
            else np.zeros(template.image.shape, mk.MASK_DTYPE)
        )
        wr = warp_image(template.image, template.variance, tmask, template.wcs, wcs, img.shape)
        res.summary["template_coverage"] = wr.coverage
        if wr.coverage < cfg.min_template_coverage:
            res.flags.append(f"template_insufficient_coverage:{wr.coverage:.2f}")
            return
        if wr.coverage < 0.999:
            res.flags.append(f"template_partial_coverage:{wr.coverage:.3f}")
        scale = np.float32(template.calibration / calib)
        timg, tvar = wr.image, wr.variance
        timg *= scale
        tvar *= scale**2
        res.template = Plane(timg, tvar, wr.mask)
    with t.stage("subtraction"):
        spsf = psf.kernel_at(img.shape[1] / 2, img.shape[0] / 2)
        tpsf = extend_kernel(template.psf)
        template_psf = KernelPsf(tpsf, fit_size=psf.fit_size)
        if cfg.subtraction == "alard_lupton":
            snr = stars["flux"] / stars["fluxErr"]
            ks = stars[snr >= cfg.al_min_snr]
            ks = ks[np.argsort(-ks["flux"])][: cfg.al_max_stamps]
            try:
                zr, ksol = alard_lupton_subtract(
                    img, var, msk, timg, tvar, wr.mask, spsf, ks["x"], ks["y"],
                    cfg.al_kernel_size, cfg.al_spatial_order, cfg.fft_workers,
                )  # fmt: skip
            except ValueError as e:
                res.flags.append(f"subtraction_failed:{e}")
                return
            res.summary.update(al_n_stamps=ksol.n_stamps, al_chi2=ksol.chi2)
        elif cfg.subtraction == "zogy":
            zr = zogy_subtract(img, var, msk, timg, tvar, wr.mask, spsf, tpsf, cfg.fft_workers)
        else:
            raise ValueError(f"unknown subtraction algorithm {cfg.subtraction!r}")
        res.difference = zr
        res.summary["n_saturated_regions"] = mk.flag_saturation_surroundings(zr.mask, pfit.fwhm)
    with t.stage("diff_background"):
        dbkg = fit_background(zr.image, zr.mask, cfg.background_cell)
        zr.image -= dbkg.evaluate()
        res.summary["diff_background_rms"] = float(np.std(dbkg.values))
        del dbkg  # its full-resolution image (64 MB for 4k×4k) is not needed past here
        ratio = scale_variance(zr.image, zr.variance, zr.mask)
        res.summary["diff_variance_scale"] = ratio
        dpsf = KernelPsf(zr.psf, fit_size=psf.fit_size)
        dsig = dpsf.sigma_at(0, 0)
        pixel_var = zr.variance.copy()
        eps = add_model_error(zr.image, zr.variance, zr.mask, timg, dsig, cfg.max_model_error)
        res.summary["diff_model_error"] = eps
    with t.stage("dia_detection"):
        ddet = detect_sources(
            zr.image, zr.variance, zr.mask, dsig, cfg.dia_threshold, negative=True,
            exclude_bits=mk.NO_DATA | mk.SAT | mk.BAD, normalize_noise=True,
        )  # fmt: skip
        res.summary["dia_significance_scale"] = ddet.noise_scale
        if cfg.dia_max_false_peaks is not None and len(ddet.peaks):
            res.summary["dia_threshold"] = drop_noise_peaks(
                ddet, zr.mask, mk.NO_DATA | mk.SAT | mk.BAD, cfg.dia_max_false_peaks,
                cfg.dia_threshold, stars["x"], stars["y"], 2.3548 * dsig,
            )  # fmt: skip
        eps_psf = psf_flux_model_error(
            zr.image, pixel_var, zr.mask, dpsf, stars["x"], stars["y"], stars["flux"],
            ddet.noise_scale, cfg.max_model_error,
        )  # fmt: skip
        at_stars = at_sat = np.zeros(0, PEAK_DTYPE)
        sat_changes: list[SaturatedChange] = []
        if cfg.star_changes:
            at_stars = star_change_peaks(
                zr.image, pixel_var, zr.mask, dpsf, stars["x"], stars["y"], stars["flux"],
                ddet.peaks, ddet.noise_scale, np.nan if eps_psf is None else eps_psf, eps,
                cfg.dia_threshold, 2.5 * 2.3548 * dsig,
            )  # fmt: skip
            sat_in = SaturationInputs(img, var, msk, psf, timg, tvar, template_psf)
            at_sat, fragments, sat_changes = saturated_star_peaks(
                zr.image, zr.variance, zr.mask, dpsf, ddet.peaks, pfit.fwhm, ddet.noise_scale,
                cfg.dia_threshold, sat_in,
            )  # fmt: skip
            ddet.peaks = np.delete(ddet.peaks, fragments)
        if cfg.drop_saturation_residuals:
            ddet.peaks = np.delete(ddet.peaks, saturation_residuals(ddet.peaks, zr.mask))
        if cfg.drop_border_peaks:
            ddet.peaks = np.delete(ddet.peaks, border_peaks(ddet.peaks, zr.image.shape))
        ddet.peaks = np.concatenate([ddet.peaks, at_stars, at_sat])
        res.summary["n_star_changes"] = len(at_stars) + len(at_sat)
    with t.stage("dia_measurement"):
        imgs = DiaImages(
            diff=zr.image, diff_var=zr.variance, diff_mask=zr.mask, diff_psf=dpsf,
            science=img, science_var=var, science_psf=psf, template=timg, template_var=tvar,
            template_psf=template_psf, template_background=None, wcs=wcs,
            calibration=calib,
        )  # fmt: skip
        res.diasources = measure_diasources(
            ddet, imgs, exposure.visit, exposure.detector, cfg.aperture_radius
        )
        scale_difference_errors(res.diasources, ddet.noise_scale)
        recentre_on_saturated_stars(res.diasources, at_sat, img, var, msk, psf, wcs)
        res.summary["diff_psf_flux_model_error"] = eps if eps_psf is None else eps_psf
        if eps_psf is not None and eps_psf < eps:
            psf_flux_with_model_error(
                res.diasources, zr.image, pixel_var, zr.mask, dpsf, calib, ddet.noise_scale,
                eps_psf, stars,
            )  # fmt: skip
        if eps_psf is not None:
            add_flux_model_error(res.diasources, eps_psf)
        set_saturated_changes(res.diasources, sat_changes, calib)
        fill_star_columns(
            res.diasources, zr.image, pixel_var, zr.mask, dpsf, calib, ddet.noise_scale,
            eps if eps_psf is None else min(eps, eps_psf), stars,
        )  # fmt: skip
        del pixel_var
        if cfg.star_residual_fraction is not None:
            res.diasources = drop_star_residuals(res.diasources, cfg.star_residual_fraction)
        if cfg.drop_cosmic_ray_repairs:
            res.diasources = drop_repaired_centres(res.diasources)
        if cfg.drop_registration_dipoles:
            res.diasources = drop_registration_dipoles(res.diasources)
    if cfg.make_cutouts:
        with t.stage("cutouts"):
            planes = {
                "science": Plane(img, var, msk),
                "template": res.template,
                "difference": Plane(zr.image, zr.variance, zr.mask),
            }
            psfs = {"science": spsf, "template": tpsf, "difference": zr.psf}
            res.cutouts = make_cutouts(res.diasources, planes, wcs, pfit.fwhm, psfs)
    res.ok = True
