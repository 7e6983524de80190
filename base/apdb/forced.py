"""The forced-source step of one CCD: DiaForcedSource rows for the known DIAObjects of the
preload that fall on the CCD and were not detected this visit, ready for ``Apdb.store``."""

from __future__ import annotations

import numpy as np

from algorithms.association import Columns
from algorithms.forced_sources import forced_source_table
from algorithms.wcs import TanSipWcs
from state.errors import InvalidInputError

from .ids import IdPacker


def build_forced_sources(
    objects: Columns,
    sources: Columns,
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
    packer: IdPacker | None = None,
) -> Columns:
    """``objects``: the preloaded DiaObjects; ``sources``: this CCD's associated DiaSources."""
    detected = np.asarray(sources.get("diaObjectId", np.zeros(0)), dtype=np.int64)
    try:
        table = forced_source_table(
            objects, detected[detected != 0], wcs, difference, psf,
            visit=visit, detector=detector, mjd=mjd, band=band, processed_mjd=processed_mjd,
            science=science,
        )  # fmt: skip
    except ValueError as e:
        raise InvalidInputError(f"forced photometry of {visit}/{detector}: {e}") from e
    n = len(table["diaObjectId"])
    table["diaForcedSourceId"] = (packer or IdPacker()).forced_source_ids(visit, detector, n)
    return table
