"""The per-CCD chain: raw amplifiers → calibrated exposure → difference image → DIASources.

:func:`run_ccd` runs the stages in order, each timed (:class:`StageTimer`): the science side
(:func:`_calibrate`: ISR to photometric calibration), the difference (:func:`_difference`:
template warp, subtraction, the difference's background and model-error variance), its
sources (:func:`_detect_changes`, :func:`_measure_changes`) and the cutouts. A stage that
cannot run records why in ``flags`` and ends the chain there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from algorithms import mask as mk
from algorithms.alard_lupton import alard_lupton_subtract
from algorithms.astrometry import AstrometryResult, fit_astrometry
from algorithms.background import fit_background
from algorithms.ccd_border import border_peaks
from algorithms.cosmicray import drop_repaired_centres, find_cosmic_rays
from algorithms.cutouts import Plane, make_cutouts
from algorithms.detection import PEAK_DTYPE, Detections, detect_sources, drop_noise_peaks
from algorithms.dia_errors import psf_flux_with_model_error, scale_difference_errors
from algorithms.diasource import DiaImages, measure_diasources
from algorithms.dipole import drop_registration_dipoles
from algorithms.geometry import CcdGeometry
from algorithms.image_sanity import image_sanity
from algorithms.interp import interpolate_masked
from algorithms.isr import Calibrations, run_isr
from algorithms.measure import psf_fit
from algorithms.model_noise import add_flux_model_error, add_model_error, psf_flux_model_error
from algorithms.photocal import fit_zeropoint
from algorithms.pipeline_types import (
    CcdResult,
    ExposureInfo,
    PipelineConfig,
    ReferenceCatalog,
    StageTimer,
    Template,
)
from algorithms.psf import KernelPsf, Psf, PsfFitResult, fit_psf, gaussian_kernel, select_psf_stars
from algorithms.psf_width import WidthMap, correct_psf_fluxes, fit_width_map
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

__all__ = [
    "CcdResult",
    "ExposureInfo",
    "PipelineConfig",
    "ReferenceCatalog",
    "Template",
    "run_ccd",
]


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


@dataclass
class _Science:
    """The calibrated science exposure and what was measured on it."""

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    psf: Psf
    psf_fit: PsfFitResult
    stars: np.ndarray
    wcs: TanSipWcs
    calibration: float
    width: WidthMap | None = None


@dataclass
class _Difference:
    """The difference image with the warped template and the PSFs that made it."""

    template: Plane
    template_psf: KernelPsf
    template_kernel: np.ndarray
    science_kernel: np.ndarray
    result: ZogyResult
    psf: KernelPsf
    sigma: float
    #: The difference's variance before the model-error term was added to ``result``'s.
    pixel_variance: np.ndarray
    model_error: float


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
    t = StageTimer(on_stage)
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
    cfg: PipelineConfig, t: StageTimer, res: CcdResult,
) -> None:  # fmt: skip
    sci = _calibrate(raw_amps, geometry, calibs, exposure, refcat, cfg, t, res)
    if sci is None:
        return
    if template is None:
        res.flags.append("no_template")
        return
    diff = _difference(sci, template, cfg, t, res)
    if diff is None:
        return
    with t.stage("dia_detection"):
        ddet, eps_psf, at_sat, sat_changes = _detect_changes(sci, diff, cfg, res)
    with t.stage("dia_measurement"):
        _measure_changes(sci, diff, ddet, eps_psf, at_sat, sat_changes, exposure, cfg, res)
    if cfg.make_cutouts:
        with t.stage("cutouts"):
            planes = {
                "science": Plane(sci.image, sci.variance, sci.mask),
                "template": diff.template,
                "difference": Plane(diff.result.image, diff.result.variance, diff.result.mask),
            }
            psfs = {
                "science": diff.science_kernel,
                "template": diff.template_kernel,
                "difference": diff.result.psf,
            }
            res.cutouts = make_cutouts(res.diasources, planes, sci.wcs, sci.psf_fit.fwhm, psfs)
    res.ok = True


def _calibrate(
    raw_amps: Sequence[np.ndarray | None], geometry: CcdGeometry, calibs: Calibrations,
    exposure: ExposureInfo, refcat: ReferenceCatalog, cfg: PipelineConfig, t: StageTimer,
    res: CcdResult,
) -> _Science | None:  # fmt: skip
    """ISR, background, detection, cosmic rays, PSF, stars, astrometry and photometric
    calibration of the science exposure; None (with the reason flagged) when one fails."""
    present = [(a, g) for a, g in zip(raw_amps, geometry.amps, strict=False) if a is not None]
    if present and all(np.nanmax(a) == np.nanmin(a) for a, _ in present):
        sat = all(np.nanmax(a) >= g.saturation for a, g in present)
        res.flags.append("saturated_image:1.00" if sat else "all_zero_or_constant_image")
        return None
    with t.stage("isr"):
        isr = run_isr(raw_amps, geometry, calibs, exposure.exptime, cfg.isr)
    res.flags += isr.flags
    img, var, msk = isr.image, isr.variance, isr.mask
    res.image, res.variance, res.mask = img, var, msk
    reason = image_sanity(img, msk, cfg.max_bad_fraction)
    if reason:
        res.flags.append(reason)
        return None
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
                return None
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
            return None
    width = None
    if cfg.psf_width_correction:
        with t.stage("psf_width"):
            width = fit_width_map(img, psf, stars)
            if width is not None and res.photocalib is not None and ast is not None:
                cal = ast.matches[:, 0]
                width = width.calibrated(astars["x"][cal], astars["y"][cal])
            if width is not None:
                res.summary.update(
                    psf_width_n_stars=width.n_stars,
                    psf_width_gradient=float(np.hypot(width.coef[1], width.coef[2])),
                )
    return _Science(img, var, msk, psf, pfit, stars, wcs, calib, width)


def _difference(
    sci: _Science, template: Template, cfg: PipelineConfig, t: StageTimer, res: CcdResult
) -> _Difference | None:
    """The template warped onto the science exposure and subtracted, the difference's
    background removed and its variance given the model-error term; None (flagged) when the
    template covers too little or the subtraction fails."""
    img, var, msk, stars = sci.image, sci.variance, sci.mask, sci.stars
    with t.stage("warp"):
        tmask = (
            template.mask
            if template.mask is not None
            else np.zeros(template.image.shape, mk.MASK_DTYPE)
        )
        wr = warp_image(template.image, template.variance, tmask, template.wcs, sci.wcs, img.shape)
        res.summary["template_coverage"] = wr.coverage
        if wr.coverage < cfg.min_template_coverage:
            res.flags.append(f"template_insufficient_coverage:{wr.coverage:.2f}")
            return None
        if wr.coverage < 0.999:
            res.flags.append(f"template_partial_coverage:{wr.coverage:.3f}")
        scale = np.float32(template.calibration / sci.calibration)
        timg, tvar = wr.image, wr.variance
        timg *= scale
        tvar *= scale**2
        tplane = Plane(timg, tvar, wr.mask)
        res.template = tplane
    with t.stage("subtraction"):
        spsf = sci.psf.kernel_at(img.shape[1] / 2, img.shape[0] / 2)
        tpsf = extend_kernel(template.psf)
        template_psf = KernelPsf(tpsf, fit_size=sci.psf.fit_size)
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
                return None
            res.summary.update(al_n_stamps=ksol.n_stamps, al_chi2=ksol.chi2)
        elif cfg.subtraction == "zogy":
            zr = zogy_subtract(img, var, msk, timg, tvar, wr.mask, spsf, tpsf, cfg.fft_workers)
        else:
            raise ValueError(f"unknown subtraction algorithm {cfg.subtraction!r}")
        res.difference = zr
        res.summary["n_saturated_regions"] = mk.flag_saturation_surroundings(
            zr.mask, sci.psf_fit.fwhm
        )
    with t.stage("diff_background"):
        dbkg = fit_background(zr.image, zr.mask, cfg.background_cell)
        zr.image -= dbkg.evaluate()
        res.summary["diff_background_rms"] = float(np.std(dbkg.values))
        del dbkg  # its full-resolution image (64 MB for 4k×4k) is not needed past here
        ratio = scale_variance(zr.image, zr.variance, zr.mask)
        res.summary["diff_variance_scale"] = ratio
        dpsf = KernelPsf(zr.psf, fit_size=sci.psf.fit_size)
        dsig = dpsf.sigma_at(0, 0)
        pixel_var = zr.variance.copy()
        eps = add_model_error(zr.image, zr.variance, zr.mask, timg, dsig, cfg.max_model_error)
        res.summary["diff_model_error"] = eps
    return _Difference(tplane, template_psf, tpsf, spsf, zr, dpsf, dsig, pixel_var, eps)


def _detect_changes(
    sci: _Science, diff: _Difference, cfg: PipelineConfig, res: CcdResult
) -> tuple[Detections, float | None, np.ndarray, list[SaturatedChange]]:
    """Peaks of the difference image of either sign, with the changes of bright and of
    saturated stars that its model-error variance hides, less what is not a source (noise
    peaks, fragments and residuals of saturated stars, the CCD's border); the detection,
    the PSF-flux model error, the saturated stars' peaks and their measured changes."""
    zr, dpsf, dsig, pixel_var, eps = (
        diff.result,
        diff.psf,
        diff.sigma,
        diff.pixel_variance,
        diff.model_error,
    )
    stars = sci.stars
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
        sat_in = SaturationInputs(
            sci.image, sci.variance, sci.mask, sci.psf, diff.template.image,
            diff.template.variance, diff.template_psf,
        )  # fmt: skip
        at_sat, fragments, sat_changes = saturated_star_peaks(
            zr.image, zr.variance, zr.mask, dpsf, ddet.peaks, sci.psf_fit.fwhm, ddet.noise_scale,
            cfg.dia_threshold, sat_in,
        )  # fmt: skip
        ddet.peaks = np.delete(ddet.peaks, fragments)
    if cfg.drop_saturation_residuals:
        ddet.peaks = np.delete(ddet.peaks, saturation_residuals(ddet.peaks, zr.mask))
    if cfg.drop_border_peaks:
        ddet.peaks = np.delete(ddet.peaks, border_peaks(ddet.peaks, zr.image.shape))
    ddet.peaks = np.concatenate([ddet.peaks, at_stars, at_sat])
    res.summary["n_star_changes"] = len(at_stars) + len(at_sat)
    return ddet, eps_psf, at_sat, sat_changes


def _measure_changes(
    sci: _Science, diff: _Difference, ddet: Detections, eps_psf: float | None,
    at_sat: np.ndarray, sat_changes: list[SaturatedChange], exposure: ExposureInfo,
    cfg: PipelineConfig, res: CcdResult,
) -> None:  # fmt: skip
    """The DIASources of the detected peaks, with honest errors, less the artefacts that
    only their measurements tell (static-star residuals, cosmic-ray repairs, registration
    dipoles); into ``res.diasources``."""
    zr, dpsf, pixel_var, eps = diff.result, diff.psf, diff.pixel_variance, diff.model_error
    calib, stars = sci.calibration, sci.stars
    imgs = DiaImages(
        diff=zr.image, diff_var=zr.variance, diff_mask=zr.mask, diff_psf=dpsf,
        science=sci.image, science_var=sci.variance, science_psf=sci.psf,
        template=diff.template.image, template_var=diff.template.variance,
        template_psf=diff.template_psf, template_background=None, wcs=sci.wcs,
        calibration=calib,
    )  # fmt: skip
    res.diasources = measure_diasources(
        ddet, imgs, exposure.visit, exposure.detector, cfg.aperture_radius
    )
    scale_difference_errors(res.diasources, ddet.noise_scale)
    recentre_on_saturated_stars(
        res.diasources, at_sat, sci.image, sci.variance, sci.mask, sci.psf, sci.wcs
    )
    res.summary["diff_psf_flux_model_error"] = eps if eps_psf is None else eps_psf
    if eps_psf is not None and eps_psf < eps:
        psf_flux_with_model_error(
            res.diasources, zr.image, pixel_var, zr.mask, dpsf, calib, ddet.noise_scale,
            eps_psf, stars,
        )  # fmt: skip
    correct_psf_fluxes(res.diasources, sci.width)
    if eps_psf is not None:
        add_flux_model_error(res.diasources, eps_psf)
    set_saturated_changes(res.diasources, sat_changes, calib)
    fill_star_columns(
        res.diasources, zr.image, pixel_var, zr.mask, dpsf, calib, ddet.noise_scale,
        eps if eps_psf is None else min(eps, eps_psf), stars,
    )  # fmt: skip
    if cfg.star_residual_fraction is not None:
        res.diasources = drop_star_residuals(res.diasources, cfg.star_residual_fraction)
    if cfg.drop_cosmic_ray_repairs:
        res.diasources = drop_repaired_centres(res.diasources)
    if cfg.drop_registration_dipoles:
        res.diasources = drop_registration_dipoles(res.diasources)
