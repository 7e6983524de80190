"""Per-CCD prompt processing adapter: get inputs, run ``algorithms.pipeline.run_ccd``, put outputs.

``CcdProcessing.preload(visit_info, detector)`` reads everything but the raw (calibrations,
template, reference stars) when ``nextVisit`` arrives; ``process(raw, preloaded)`` runs the
chain once the raw is there. Neither raises on bad data: every problem ends up in the flags
and the ``reason`` of the result (bad files, missing amplifiers, NaNs, a template that does
not cover the CCD, too few reference stars), so the worker never crashes on an input.

No Ray, no asyncio: a plain class the CcdProcessor component runs in its worker process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from algorithms.diasource import DIASOURCE_DTYPE
from algorithms.isr import Calibrations
from algorithms.pipeline import (
    CcdResult,
    ExposureInfo,
    PipelineConfig,
    ReferenceCatalog,
    Template,
    run_ccd,
)
from algorithms.wcs import TanSipWcs
from base.ccd_inputs import (
    AB_NJY_ZERO,
    CcdRepository,
    ccd_geometry,
    read_calibrations,
    read_raw,
    read_reference_catalog,
    read_template,
)
from base.cutouts import cutout_to_fits
from base.input_cache import InputCache
from config.cameras import Camera, load_camera
from state.clock import tai_now
from state.errors import ConfigurationError, DmcsError, InvalidInputError

log = logging.getLogger(__name__)

#: run_ccd stage → latency milestone (docs/events.md).
MILESTONES = {"isr": "isrDone", "subtraction": "differenceDone", "dia_measurement":
              "diaSourcesMeasured"}  # fmt: skip
#: Flags that make a CCD's DIASources unfit for alerts even when the chain completed.
#: (Calibrations that exist but cannot be read or verified block too: ISR without them is
#: not the product; a calibration that was never there is only flagged, ``missing_calib``.)
BLOCKING_FLAGS = ("astrometry_failed", "too_few_reference_stars", "no_photometric_calibration",
                  "calibs_unreadable")  # fmt: skip


@dataclass
class Preloaded:
    """Everything for one (visit, detector) but the raw."""

    visit: int
    detector: int
    band: str
    camera: Camera
    calibs: Calibrations
    template: Template | None
    refcat: ReferenceCatalog
    flags: list[str]
    preload_s: float
    preload_tai: float


@dataclass
class CcdOutputs:
    """The processed visit image summary, the DIASource table and the cutouts of one CCD."""

    visit: int
    detector: int
    ok: bool
    reason: str
    flags: list[str]
    summary: dict[str, Any]
    diasources: np.ndarray
    cutouts: list[dict[str, bytes]]
    timings: dict[str, float]
    cpu_timings: dict[str, float]
    stages: dict[str, float] = field(default_factory=dict)
    background: dict[str, object] | None = None
    wcs: dict[str, object] | None = None
    #: CPU seconds of the adapter's own work beside ``run_ccd``: ``raw`` (read and checksum
    #: verification), ``outputs`` (cutout FITS and summary).
    adapter_cpu: dict[str, float] = field(default_factory=dict)


class CcdProcessing:
    """The adapter. ``repository`` gives file paths; ``config`` tunes ``run_ccd``; ``cache``
    (optional) keeps decoded calibrations and templates for every worker of the node."""

    def __init__(
        self,
        repository: CcdRepository,
        config: PipelineConfig | None = None,
        refcat_max_mag: float = 23.0,
        make_cutouts: bool = True,
        cache: InputCache | None = None,
    ) -> None:
        self.repository = repository
        self.config = config or PipelineConfig()
        self.refcat_max_mag = refcat_max_mag
        self.make_cutouts = make_cutouts
        self.cache = cache

    # ----------------------------------------------------------------- preload
    def preload(self, visit_info: Mapping[str, Any], detector: int) -> Preloaded:
        """Read calibrations, template and reference stars for a ``nextVisit`` payload.

        Needs ``visit``, ``camera``, ``band``, ``ra``, ``dec``, ``fieldId`` and ``startMjd``;
        a malformed payload or an unknown camera/detector raises ``InvalidInputError`` (the
        request is wrong); missing or unreadable products only add flags.
        """
        t0 = time.perf_counter()
        try:
            visit, band = int(visit_info["visit"]), str(visit_info["band"])
            ra, dec = float(visit_info["ra"]), float(visit_info["dec"])
            field_id, mjd = int(visit_info["fieldId"]), float(visit_info["startMjd"])
            camera = load_camera(str(visit_info["camera"]))
            det = camera.detector(detector)
        except (KeyError, TypeError, ValueError, ConfigurationError) as e:
            raise InvalidInputError(f"bad nextVisit payload for preload: {e}") from e
        flags: list[str] = []
        calibs = Calibrations()
        try:
            calibs, missing = read_calibrations(
                self.repository.get_calibs(detector, band, mjd), det, self.cache
            )
            flags += missing
        except DmcsError as e:
            flags.append(f"calibs_unreadable:{e}")
        template = None
        try:
            tpath = self.repository.get_template(field_id, band, detector)
            if tpath is None:
                flags.append("no_template")
            else:
                template = read_template(tpath)
        except DmcsError as e:
            flags.append(f"template_unreadable:{e}")
        refcat = ReferenceCatalog(np.zeros(0), np.zeros(0), np.zeros(0))
        try:
            rpath = self.repository.get_refcat()
            if rpath is None:
                flags.append("no_reference_catalog")
            else:
                cra, cdec, radius = _footprint(template, camera, ra, dec)
                refcat = read_reference_catalog(rpath, band, cra, cdec, radius, self.refcat_max_mag)
        except DmcsError as e:
            flags.append(f"reference_catalog_unreadable:{e}")
        if len(refcat.ra) < self.config.min_reference_stars:
            flags.append(f"too_few_reference_stars:{len(refcat.ra)}")
        return Preloaded(
            visit=visit, detector=detector, band=band, camera=camera, calibs=calibs,
            template=template, refcat=refcat, flags=flags,
            preload_s=time.perf_counter() - t0, preload_tai=tai_now(),
        )  # fmt: skip

    # ----------------------------------------------------------------- process
    def process(
        self, raw: Path | str | fits.HDUList, pre: Preloaded, raw_sha256: str | None = None
    ) -> CcdOutputs:
        """Run the chain on one raw (a path or an open HDUList; ``raw_sha256``, its registered
        checksum, where known: see ``read_raw``). Never raises."""
        stages: dict[str, float] = {}
        try:
            return self._process(raw, pre, stages, raw_sha256)
        except DmcsError as e:
            return _failed(pre, f"bad_input:{e}", stages)
        except Exception as e:  # the worker boundary: record the reason, never crash
            log.exception("visit %s detector %s: processing error", pre.visit, pre.detector)
            return _failed(pre, f"internal_error:{type(e).__name__}:{e}", stages)

    def _process(
        self,
        raw: Path | str | fits.HDUList,
        pre: Preloaded,
        stages: dict[str, float],
        raw_sha256: str | None,
    ) -> CcdOutputs:
        det = pre.camera.detector(pre.detector)
        c0 = time.process_time()
        rc = read_raw(raw, det, raw_sha256)
        raw_cpu = time.process_time() - c0
        hdr = rc.header
        for key, want in (("VISIT", pre.visit), ("DETECTOR", pre.detector)):
            if key in hdr and int(hdr[key]) != want:  # type: ignore[call-overload]
                raise InvalidInputError(f"raw {key}={hdr[key]} but {want} was expected")
        try:
            wcs = TanSipWcs.from_header(hdr)
            exptime = float(hdr["EXPTIME"])  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidInputError(f"raw header: {e}") from e
        zp = pre.camera.photometry.zeropoint.get(pre.band)
        nominal = None if zp is None or exptime <= 0 else 10 ** ((AB_NJY_ZERO - zp) / 2.5) / exptime
        seeing = hdr.get("SEEING")
        seeing_pix = (
            float(seeing) / pre.camera.pixel_scale_arcsec  # type: ignore[arg-type]
            if isinstance(seeing, (int, float)) and seeing > 0
            else None
        )
        exp = ExposureInfo(visit=pre.visit, detector=pre.detector, exptime=exptime,
                           initial_wcs=wcs, band=pre.band, nominal_calibration=nominal,
                           seeing_fwhm_pix=seeing_pix)  # fmt: skip

        def milestone(stage: str) -> None:
            if stage in MILESTONES:
                stages[MILESTONES[stage]] = tai_now()

        cfg = self.config
        if cfg.make_cutouts != self.make_cutouts:
            cfg = _replace(cfg, make_cutouts=self.make_cutouts)
        res = run_ccd(rc.amps, ccd_geometry(det), pre.calibs, exp, pre.refcat, pre.template,
                      cfg, on_stage=milestone)  # fmt: skip
        c1 = time.process_time()
        out = _outputs(pre, res, rc.flags, stages)
        out.adapter_cpu.update(raw=raw_cpu, outputs=time.process_time() - c1)
        return out


def _replace(cfg: PipelineConfig, **changes: Any) -> PipelineConfig:
    from dataclasses import replace

    return replace(cfg, **changes)


def _footprint(
    template: Template | None, camera: Camera, ra: float, dec: float
) -> tuple[float, float, float]:
    """Centre and radius (deg) of the sky to load reference stars for."""
    if template is not None:
        ny, nx = template.image.shape
        cra, cdec = template.wcs.pixel_to_sky(np.array([(nx - 1) / 2]), np.array([(ny - 1) / 2]))
        radius = 0.5 * float(np.hypot(nx, ny)) * template.wcs.pixel_scale() / 3600.0
        return float(cra[0]), float(cdec[0]), radius
    return ra, dec, camera.field_radius_deg


def _reason(flags: list[str], ok: bool) -> str:
    bad = [f for f in flags if not f.startswith(("template_partial_coverage", "nan_pixels"))]
    if ok and not bad:
        return ""
    return "; ".join(bad) if bad else "failed"


def _summary(pre: Preloaded, res: CcdResult) -> dict[str, Any]:
    s = res.summary
    scale = pre.camera.pixel_scale_arcsec
    fwhm = s.get("psf_fwhm_pix")
    out: dict[str, Any] = {
        "visit": pre.visit,
        "detector": pre.detector,
        "band": pre.band,
        "zeropoint": s.get("zeropoint"),
        "calibration_njy_per_electron": res.photocalib.calibration if res.photocalib else None,
        "sky_level_electrons": s.get("background_median"),
        "psf_fwhm_pixels": fwhm,
        "psf_fwhm_arcsec": None if fwhm is None else float(fwhm) * scale,
        "psf_n_stars": s.get("psf_nstars"),
        "astrometric_scatter_mas": s.get("astrom_rms_mas"),
        "astrometry_n_matched": s.get("astrom_n_matched"),
        "n_sources": 0 if res.sources is None else len(res.sources),
        "n_cosmic_rays": s.get("n_cosmic_rays"),
        "template_coverage": s.get("template_coverage"),
        "diff_variance_scale": s.get("diff_variance_scale"),
        "diff_model_error": s.get("diff_model_error"),
        "diff_psf_flux_model_error": s.get("diff_psf_flux_model_error"),
        "psf_width_n_stars": s.get("psf_width_n_stars"),
        "psf_width_gradient": s.get("psf_width_gradient"),
        "n_diasources": len(res.diasources),
        "n_star_changes": s.get("n_star_changes"),
        "n_reference_stars": len(pre.refcat.ra),
        "preload_s": pre.preload_s,
    }
    return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in out.items()}


def _outputs(
    pre: Preloaded, res: CcdResult, raw_flags: list[str], stages: dict[str, float]
) -> CcdOutputs:
    flags = pre.flags + raw_flags + [f for f in res.flags if f not in pre.flags]
    ok = res.ok and not any(f.startswith(BLOCKING_FLAGS) for f in flags)
    cutouts: list[dict[str, bytes]] = []
    for row, stamps in zip(res.diasources, res.cutouts, strict=False):
        extra = {"VISIT": pre.visit, "DETECTOR": pre.detector,
                 "DIASRCID": int(row["diaSourceId"])}  # fmt: skip
        cutouts.append({name: cutout_to_fits(c, extra) for name, c in stamps.items()})
    summary = _summary(pre, res)
    summary["flags"] = ";".join(flags)
    return CcdOutputs(
        visit=pre.visit, detector=pre.detector, ok=ok, reason=_reason(flags, ok), flags=flags,
        summary=summary, diasources=res.diasources, cutouts=cutouts,
        timings=dict(res.timings), cpu_timings=dict(res.cpu_timings), stages=dict(stages),
        background=res.background.to_dict() if res.background is not None else None,
        wcs=res.wcs.to_header() if res.wcs is not None and res.astrometry is not None else None,
    )  # fmt: skip


def _failed(pre: Preloaded, reason: str, stages: dict[str, float]) -> CcdOutputs:
    flags = [*pre.flags, reason]
    return CcdOutputs(
        visit=pre.visit, detector=pre.detector, ok=False, reason=reason, flags=flags,
        summary={"visit": pre.visit, "detector": pre.detector, "flags": ";".join(flags)},
        diasources=np.zeros(0, dtype=DIASOURCE_DTYPE), cutouts=[], timings={},
        cpu_timings={}, stages=dict(stages),
    )  # fmt: skip
