"""The CCD pipeline run on a simulated visit (``algorithms.synthetic``), with the visit's own
reference catalogue and template: what the algorithm tests and benchmarks measure."""

from __future__ import annotations

from algorithms.pipeline import (
    CcdResult,
    ExposureInfo,
    PipelineConfig,
    ReferenceCatalog,
    Template,
    run_ccd,
)
from algorithms.synthetic import SimVisit


def run_visit(
    v: SimVisit, config: PipelineConfig | None = None, *, visit: int = 1, detector: int = 0
) -> CcdResult:
    exp = ExposureInfo(visit=visit, detector=detector, exptime=v.exptime, initial_wcs=v.initial_wcs)
    ref = ReferenceCatalog(v.ref_ra, v.ref_dec, v.ref_flux)
    tm = Template(v.template_image, v.template_variance, v.template_wcs, v.template_psf)
    return run_ccd(v.raw_amps, v.geometry, v.calibs, exp, ref, tm, config)
