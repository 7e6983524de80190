"""What the per-CCD chain (:mod:`algorithms.pipeline`) takes and gives: the exposure, the
reference catalogue, the template, the configuration, the result, and its stage timer."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from algorithms.astrometry import AstrometryResult
from algorithms.background import BackgroundModel
from algorithms.cutouts import Cutout, Plane
from algorithms.diasource import DIASOURCE_DTYPE
from algorithms.isr import IsrConfig
from algorithms.photocal import PhotoCalib
from algorithms.psf import Psf
from algorithms.wcs import TanSipWcs
from algorithms.zogy import ZogyResult


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
    #: Correct PSF fluxes for the PSF model's width error across the CCD
    #: (``algorithms.psf_width``).
    psf_width_correction: bool = True
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


class StageTimer:
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
