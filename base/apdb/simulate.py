"""Synthetic DIASource / DIAObject tables with Rubin column names, for tests and benchmarks.

The values are physically plausible (nJy fluxes, sub-arcsecond errors, LSSTCam-sized CCDs) but
random; nothing here is used by the pipeline itself.
"""

from __future__ import annotations

import numpy as np

from algorithms.association import Columns
from algorithms.association_summary import summarize

from .ids import IdPacker

ARCSEC_DEG = 1.0 / 3600.0


def dia_sources(
    rng: np.random.Generator,
    ra: np.ndarray,
    dec: np.ndarray,
    visit: int,
    detector: int,
    mjd: float,
    band: str = "r",
    packer: IdPacker | None = None,
    flux: np.ndarray | None = None,
    pos_err_arcsec: float = 0.05,
) -> Columns:
    """A DiaSource table for detections at (ra, dec) with errors ``pos_err_arcsec``."""
    n = len(ra)
    packer = packer or IdPacker()
    ids = packer.dia_source_ids(visit, detector, n)
    if flux is None:
        flux = rng.lognormal(np.log(5000.0), 0.8, n) * rng.choice([-1.0, 1.0], n, p=[0.2, 0.8])
    flux = np.asarray(flux, dtype=np.float64)
    flux_err = np.full(n, 250.0) + 0.02 * np.abs(flux)
    err = np.full(n, pos_err_arcsec * ARCSEC_DEG)
    zeros = np.zeros(n, dtype=bool)
    cols: Columns = {
        "diaSourceId": ids,
        "visit": np.full(n, visit, dtype=np.int64),
        "detector": np.full(n, detector, dtype=np.int16),
        "midpointMjdTai": np.full(n, mjd),
        "exposureTime": np.full(n, 30.0, dtype=np.float32),
        "ra": np.asarray(ra, dtype=np.float64),
        "dec": np.asarray(dec, dtype=np.float64),
        "raErr": err.astype(np.float32),
        "decErr": err.astype(np.float32),
        "ra_dec_Cov": np.zeros(n, dtype=np.float32),
        "x": rng.uniform(0, 4072, n).astype(np.float32),
        "y": rng.uniform(0, 4000, n).astype(np.float32),
        "xErr": np.full(n, 0.25, dtype=np.float32),
        "yErr": np.full(n, 0.25, dtype=np.float32),
        "psfFlux": flux.astype(np.float32),
        "psfFluxErr": flux_err.astype(np.float32),
        "psfNdata": np.full(n, 441, dtype=np.int32),
        "apFlux": (flux * 1.02).astype(np.float32),
        "apFluxErr": (flux_err * 1.1).astype(np.float32),
        "snr": (np.abs(flux) / flux_err).astype(np.float32),
        "isNegative": flux < 0,
        "scienceFlux": (np.abs(flux) + 20000.0).astype(np.float32),
        "scienceFluxErr": (flux_err * 1.3).astype(np.float32),
        "templateFlux": np.full(n, 20000.0, dtype=np.float32),
        "templateFluxErr": np.full(n, 200.0, dtype=np.float32),
        "extendedness": rng.uniform(0, 1, n).astype(np.float32),
        "reliability": rng.uniform(0.5, 1, n).astype(np.float32),
        "ixx": np.full(n, 4.0, dtype=np.float32),
        "iyy": np.full(n, 4.0, dtype=np.float32),
        "ixy": np.zeros(n, dtype=np.float32),
        "band": np.array([band] * n, dtype=object),
        "timeProcessedMjdTai": np.full(n, mjd + 30.0 / 86400.0),
        "bboxSize": np.full(n, 21, dtype=np.int32),
        "trailNdata": np.zeros(n, dtype=np.int32),
        "dipoleNdata": np.zeros(n, dtype=np.int32),
        "diaObjectId": np.zeros(n, dtype=np.int64),
        "ssObjectId": np.zeros(n, dtype=np.int64),
    }
    for flag in (
        "centroid_flag", "psfFlux_flag", "pixelFlags_edge", "pixelFlags_saturatedCenter",
        "pixelFlags_crCenter", "pixelFlags_nodataCenter", "pixelFlags_offimage", "isDipole",
    ):  # fmt: skip
        cols[flag] = zeros.copy()
    return cols


def dia_objects_from_sources(sources: Columns, mjd: float) -> Columns:
    """DiaObjects founded by ``sources`` (one each), with summaries computed from them."""
    ids = np.asarray(sources["diaSourceId"], dtype=np.int64)
    src = {**sources, "diaObjectId": ids}
    out = summarize(ids, src)
    out["diaObjectId"] = ids
    out["validityStartMjdTai"] = np.full(len(ids), mjd)
    return out


def random_sky(
    rng: np.random.Generator, n: int, ra0: float, dec0: float, half_width_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform positions on the sphere in a small ra/dec box around (ra0, dec0)."""
    d0, d1 = np.radians(dec0 - half_width_deg), np.radians(dec0 + half_width_deg)
    dec = np.degrees(np.arcsin(rng.uniform(np.sin(d0), np.sin(d1), n)))
    half_ra = half_width_deg / np.cos(np.radians(dec0))
    ra = (ra0 + rng.uniform(-half_ra, half_ra, n)) % 360.0
    return ra, dec
