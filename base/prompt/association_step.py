"""One CCD through association into an APDB: the step prompt and batch processing share.

Padded-footprint preload, ``algorithms.association_run.associate`` (moving objects first, then
DIAObjects, then new objects), and the APDB's atomic store keyed by (visit, detector).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from algorithms.association_run import AssociationResult, associate
from base.apdb import Apdb, Region
from base.apdb.apdb import Preload
from base.prompt.requests import CcdResults
from state.clock import tai_now
from state.errors import InvalidInputError


class AssociationParams(Protocol):
    @property
    def radius_arcsec(self) -> float: ...
    @property
    def pad_arcsec(self) -> float: ...
    @property
    def history_days(self) -> float: ...


@dataclass
class Associated:
    result: AssociationResult
    preload: Preload
    stored: bool  # False: the APDB already held this (visit, detector); nothing was added


async def associate_ccd(apdb: Apdb, ccd: CcdResults, params: AssociationParams) -> Associated:
    """Associate and store one CCD; stamps ``associated`` and ``apdbStored`` in its stages.

    Malformed DIASources raise ``InvalidInputError``; APDB errors propagate as they are.
    """
    region = Region(ccd.footprint_ra, ccd.footprint_dec, params.pad_arcsec)
    try:
        preload = await apdb.preload(region, ccd.midpoint_mjd, params.history_days)
        result = await asyncio.to_thread(
            associate,
            ccd.sources,
            preload.objects,
            preload.sources,
            preload.forced_sources,
            ccd.midpoint_mjd,
            radius_arcsec=params.radius_arcsec,
        )
        ccd.stages["associated"] = tai_now()
        store = await apdb.store(
            ccd.visit,
            ccd.detector,
            result.sources,
            result.objects,
            ccd.forced_sources,
            result.ss_sources,
        )
    except (ValueError, TypeError, KeyError) as e:
        raise InvalidInputError(f"visit {ccd.visit} detector {ccd.detector}: {e}") from e
    ccd.stages["apdbStored"] = tai_now()
    return Associated(result, preload, store.stored)
