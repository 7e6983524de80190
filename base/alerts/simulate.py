"""Simulated alert batches (one CCD's DIASources, their diaObjects and noise cutouts), for the
alert stream's tests and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from base.alerts.avro_columnar import CutoutPlanes, encode_alert_batch
from base.alerts.batch import AlertBatch
from base.alerts.fits import CutoutTemplate, tan_wcs
from base.apdb import IdPacker
from base.apdb.simulate import dia_objects_from_sources, dia_sources, random_sky

CUTOUT_SIDE = 30
SCALE_DEG = 0.2 / 3600
MJD = 60950.0


@dataclass
class SimulatedCcd:
    detector: int
    sources: dict[str, Any]
    objects: dict[str, Any]
    batch: AlertBatch


def cutout_template() -> CutoutTemplate:
    centre = (CUTOUT_SIDE - 1) / 2 + 1
    wcs = tan_wcs(0, 0, centre, centre, (-SCALE_DEG, 0, 0, SCALE_DEG))
    return CutoutTemplate.build((CUTOUT_SIDE, CUTOUT_SIDE), wcs)


def simulated_ccd(
    rng: np.random.Generator,
    n: int,
    visit: int,
    detector: int,
    template: CutoutTemplate,
    *,
    every_cutout: bool = True,
    second_band: str | None = None,
) -> SimulatedCcd:
    """``n`` DIASources of one CCD, each founding its own diaObject, as one alert batch with
    noise cutouts: science, template and difference, or science only; with ``second_band``
    every other DIASource is in that band."""
    ra, dec = random_sky(rng, n, 120.0 + detector * 0.3, -5.0, 0.1)
    src = dia_sources(rng, ra, dec, visit, detector, MJD, packer=IdPacker(4))
    if second_band is not None:
        src["band"][::2] = second_band
    src["diaObjectId"] = src["diaSourceId"].copy()
    objects = dia_objects_from_sources(src, MJD)
    img = rng.normal(0, 30, (n, CUTOUT_SIDE, CUTOUT_SIDE)).astype(np.float32)
    planes = template.render(
        img, np.abs(img) + 9, np.zeros(img.shape, np.int32), {"CRVAL1": ra, "CRVAL2": dec}
    )
    cutouts = (
        CutoutPlanes(planes, planes, planes) if every_cutout else CutoutPlanes(planes, None, None)
    )
    batch = encode_alert_batch(src, objects, cutouts=cutouts)
    return SimulatedCcd(detector, src, objects, batch)
