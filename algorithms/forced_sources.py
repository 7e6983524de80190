"""The DiaForcedSource rows of one CCD (DMS-REQ-0317): forced PSF photometry on the difference
image (and, if given, the science image) at every known DIAObject inside the CCD that this visit
did not detect. Pure: the caller supplies the preloaded objects, the images, the PSF and the WCS,
and assigns ``diaForcedSourceId`` (the APDB's id packer).
"""

from __future__ import annotations

import numpy as np

from algorithms.association import Columns
from algorithms.forced_photometry import forced_psf_photometry
from algorithms.wcs import TanSipWcs


def undetected_in_footprint(
    objects: Columns,
    detected_object_ids: np.ndarray,
    wcs: TanSipWcs,
    shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of ``objects`` on the image (pixel centres within it) and not detected now: (rows,
    x, y) with 0-based pixel positions."""
    ids = np.asarray(objects.get("diaObjectId", np.zeros(0)), dtype=np.int64)
    if len(ids) == 0:
        empty = np.zeros(0)
        return np.zeros(0, dtype=np.int64), empty, empty
    x, y = wcs.sky_to_pixel(np.asarray(objects["ra"]), np.asarray(objects["dec"]))
    ny, nx = shape
    on = (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
    missed = ~np.isin(ids, np.asarray(detected_object_ids, dtype=np.int64))
    rows = np.flatnonzero(on & missed)
    return rows, x[rows], y[rows]


def forced_source_table(
    objects: Columns,
    detected_object_ids: np.ndarray,
    wcs: TanSipWcs,
    difference: tuple[np.ndarray, np.ndarray, np.ndarray],
    psf: np.ndarray,
    *,
    visit: int,
    detector: int,
    mjd: float,
    band: str,
    processed_mjd: float,
    science: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    bad_mask_bits: int = 0xFFFFFFFF,
) -> Columns:
    """DiaForcedSource columns (Rubin names, no ``diaForcedSourceId``) for undetected objects.

    ``difference`` and ``science`` are (image, variance, mask) in nJy; fluxes whose PSF has no
    usable pixel are NaN (null in the APDB).
    """
    image, variance, mask = difference
    rows, x, y = undetected_in_footprint(objects, detected_object_ids, wcs, np.shape(image))
    n = len(rows)
    diff = forced_psf_photometry(image, variance, psf, x, y, mask, bad_mask_bits)
    if science is not None:
        sci = forced_psf_photometry(*science[:2], psf, x, y, science[2], bad_mask_bits)
        sci_flux, sci_err = sci.flux, sci.flux_err
    else:
        sci_flux = sci_err = np.full(n, np.nan)
    return {
        "diaObjectId": np.asarray(objects["diaObjectId"], dtype=np.int64)[rows],
        "ra": np.asarray(objects["ra"], dtype=np.float64)[rows],
        "dec": np.asarray(objects["dec"], dtype=np.float64)[rows],
        "visit": np.full(n, visit, dtype=np.int64),
        "detector": np.full(n, detector, dtype=np.int16),
        "psfFlux": diff.flux.astype(np.float32),
        "psfFluxErr": diff.flux_err.astype(np.float32),
        "midpointMjdTai": np.full(n, mjd),
        "scienceFlux": np.asarray(sci_flux, dtype=np.float32),
        "scienceFluxErr": np.asarray(sci_err, dtype=np.float32),
        "band": np.array([band] * n, dtype=object),
        "timeProcessedMjdTai": np.full(n, processed_mjd),
    }
