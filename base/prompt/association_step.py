"""One CCD through association into an APDB: the step prompt and batch processing share.

Padded-footprint preload, ``algorithms.association_run.associate`` (moving objects first, then
DIAObjects, then new objects), and the APDB's atomic store keyed by (visit, detector).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

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


#: Builds a stored CCD's alert hand-off from its association and preload (``alert_handoff``).
HandoffOf = Callable[[CcdResults, AssociationResult, Preload], dict[str, Any]]


def alert_handoff(ccd: CcdResults, result: AssociationResult, preload: Preload) -> dict[str, Any]:
    """What AlertPublisher needs to build one CCD's alerts without reading the APDB back."""
    return {
        "visit": ccd.visit,
        "detector": ccd.detector,
        "dayObs": ccd.day_obs,
        "band": ccd.band,
        "sources": result.sources,
        "objects": result.objects,
        "history": preload.sources,
        "forcedHistory": preload.forced_sources,
        "ssSources": result.ss_sources,
        "cutouts": ccd.cutouts,
        "stages": dict(ccd.stages),
    }


async def associate_ccd(
    apdb: Apdb, ccd: CcdResults, params: AssociationParams, handoff: HandoffOf | None = None
) -> Associated:
    """Associate and store one CCD; stamps ``associated`` and ``apdbStored`` in its stages.

    With ``handoff``, the CCD's alert hand-off is written to the APDB's alert outbox in the
    store's own transaction (its ``apdbStored`` stamped as it is written).
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
        build: Callable[[], dict[str, Any]] | None = None
        if handoff is not None:
            of = handoff

            def build() -> dict[str, Any]:
                ccd.stages["apdbStored"] = tai_now()
                return of(ccd, result, preload)

        ccd.stages.pop("apdbStored", None)
        store = await apdb.store(
            ccd.visit,
            ccd.detector,
            result.sources,
            result.objects,
            ccd.forced_sources,
            result.ss_sources,
            handoff=build,
        )
    except (ValueError, TypeError, KeyError) as e:
        raise InvalidInputError(f"visit {ccd.visit} detector {ccd.detector}: {e}") from e
    ccd.stages.setdefault("apdbStored", tai_now())
    return Associated(result, preload, store.stored)
