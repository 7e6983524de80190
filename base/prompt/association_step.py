"""One CCD through association into an APDB: the step prompt and batch processing share.

Padded-footprint preload of the DiaObjects, ``algorithms.association_run.match`` (moving
objects first, then DIAObjects, then new objects), the history of only the objects matched
(what the summaries and the alerts use), the summaries, and the APDB's atomic store keyed by
(visit, detector).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from algorithms.association_run import (
    AssociationResult,
    alert_selection,
    match,
    summarize_matched,
)
from algorithms.reliability import ReliabilityModel
from base.apdb import Apdb, Region
from base.apdb.apdb import Preload, StoreResult
from base.prompt.requests import CcdResults
from state.clock import tai_now
from state.errors import DmcsError, InvalidInputError

#: CCDs with at most this many DIASources (and preloaded DIAObjects) are scored and associated
#: on the event loop (a millisecond or two): a thread hand-off would cost more than the work.
INLINE_SOURCES = 500


async def _run(n_sources: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, in a thread when the CCD is large enough to hold the loop."""
    if n_sources <= INLINE_SOURCES:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


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
    not_alerted: int = 0  # stored DIASources left out of the alert hand-off


#: Builds a stored CCD's alert hand-off from its association and preload (``alert_handoff``).
HandoffOf = Callable[[CcdResults, AssociationResult, Preload], dict[str, Any]]


@dataclass(frozen=True)
class AlertSet:
    """What is alerted of one associated CCD: sources, their SSSources and cutouts."""

    sources: dict[str, np.ndarray]
    ss_sources: dict[str, np.ndarray]
    cutouts: list[tuple[bytes | None, bytes | None, bytes | None]]
    n_dropped: int  # DIASources without an object or below the reliability threshold


def alert_set(
    result: AssociationResult, ccd: CcdResults, min_reliability: float | None
) -> AlertSet:
    """The alerted subset of a stored CCD (``algorithms.association_run.alert_selection``)."""
    src = result.sources
    keep = alert_selection(src, min_reliability)
    ids = np.asarray(src["diaSourceId"], dtype=np.int64)[keep]
    ss = result.ss_sources
    if ss:
        on = np.isin(np.asarray(ss["diaSourceId"], dtype=np.int64), ids)
        ss = {k: np.asarray(v)[on] for k, v in ss.items()}
    cutouts = [c for c, k in zip(ccd.cutouts, keep.tolist(), strict=False) if k]
    return AlertSet(
        {k: np.asarray(v)[keep] for k, v in src.items()}, ss, cutouts, int((~keep).sum())
    )


def alert_handoff(
    ccd: CcdResults,
    result: AssociationResult,
    preload: Preload,
    min_reliability: float | None = None,
) -> dict[str, Any]:
    """What AlertPublisher needs to build one CCD's alerts without reading the APDB back:
    only the DIASources that are alerted (``alert_set``); ``notAlerted`` counts the rest."""
    alerted = alert_set(result, ccd, min_reliability)
    return {
        "visit": ccd.visit,
        "detector": ccd.detector,
        "dayObs": ccd.day_obs,
        "band": ccd.band,
        "sources": alerted.sources,
        "objects": result.objects,
        "history": preload.sources,
        "forcedHistory": preload.forced_sources,
        "ssSources": alerted.ss_sources,
        "cutouts": alerted.cutouts,
        "stages": dict(ccd.stages),
        "notAlerted": alerted.n_dropped,
    }


def score_reliability(ccd: CcdResults, model: ReliabilityModel) -> None:
    """Replace the DIASources' reliability with the trained model's score."""
    if len(ccd.sources.get("diaSourceId", ())):
        ccd.sources["reliability"] = model.score(ccd.sources)
        if "reliabilityVersion" in ccd.sources:
            n = len(ccd.sources["diaSourceId"])
            ccd.sources["reliabilityVersion"] = np.full(n, model.version)


async def associate_ccd(
    apdb: Apdb,
    ccd: CcdResults,
    params: AssociationParams,
    model: ReliabilityModel | None = None,
    min_reliability: float | None = None,
    *,
    handoff: HandoffOf | None = None,
    exclusive: bool = False,
) -> Associated:
    """Associate and store one CCD; stamps ``associated`` and ``apdbStored`` in its stages.

    With ``handoff``, the CCD's alert hand-off is written to the APDB's alert outbox in the
    store's own transaction. ``apdbStored`` is the store's commit (``StoreResult.stored_tai``),
    written into the outbox row too, by the transaction's last statement. With a ``model``
    the DIASources' reliability is its score (stored in the APDB and in the alerts); with
    ``min_reliability`` too, that score decides which unmatched sources found new DIAObjects
    (``associate``), so every source that reaches the alert threshold has one.
    With ``exclusive`` (several Associations share the APDB), the preload, the association and
    the store hold the padded footprint's region lock (``base.apdb.region_lock``).
    Malformed DIASources raise ``InvalidInputError``; APDB errors propagate as they are.
    """
    await _score(ccd, model)
    return await _one(apdb, ccd, params, model, min_reliability, handoff, exclusive)


async def _one(
    apdb: Apdb,
    ccd: CcdResults,
    params: AssociationParams,
    model: ReliabilityModel | None,
    min_reliability: float | None,
    handoff: HandoffOf | None,
    exclusive: bool,
) -> Associated:
    """One scored CCD in a transaction of its own, under its region lock if ``exclusive``."""
    region = Region(ccd.footprint_ra, ccd.footprint_dec, params.pad_arcsec)
    lock = apdb.region_lock(region) if exclusive else contextlib.nullcontext()
    async with lock:
        done = await _associate_and_store(
            apdb, ccd, params, region, model, min_reliability, handoff
        )
    ccd.stages.setdefault("apdbStored", tai_now())  # a duplicate: stored before
    return done


async def associate_ccds(
    apdb: Apdb,
    ccds: Sequence[CcdResults],
    params: AssociationParams,
    model: ReliabilityModel | None = None,
    min_reliability: float | None = None,
    *,
    handoff: HandoffOf | None = None,
    exclusive: bool = False,
) -> list[Associated | DmcsError]:
    """:func:`associate_ccd` for several CCDs in order, stored in one transaction (group
    commit: one commit, one WAL flush, and with ``exclusive`` the region locks of all their
    footprints taken at once as locks of that transaction, no unlock).

    Each CCD's preload is read inside the transaction, so it sees the objects the CCDs before
    it in the batch founded or updated, exactly as if they had been stored one at a time. If
    any CCD of the batch fails, nothing of the batch is kept and the CCDs are associated again
    one at a time (:func:`associate_ccd`), so each gets its own outcome: the result, or the
    ``DmcsError`` it raised (``InvalidInputError`` for malformed DIASources).
    """
    out: list[Associated | DmcsError | None] = [None] * len(ccds)
    scored: list[int] = []
    for i, ccd in enumerate(ccds):
        try:
            await _score(ccd, model)
            scored.append(i)
        except InvalidInputError as e:
            out[i] = e
    regions = {i: Region(ccds[i].footprint_ra, ccds[i].footprint_dec, params.pad_arcsec)
               for i in scored}  # fmt: skip
    if len(scored) > 1:
        try:
            async with apdb.transaction() as tx:
                if exclusive:
                    await tx.lock_regions(list(regions.values()))
                for i in scored:
                    out[i] = await _associate_and_store(
                        tx, ccds[i], params, regions[i], model, min_reliability, handoff
                    )
            for i in scored:  # committed: every CCD's apdbStored is the commit's
                ccds[i].stages["apdbStored"] = tx.stored_tai or tai_now()
            return [o for o in out if o is not None]
        except DmcsError:
            pass  # nothing of the batch was kept: each CCD again, on its own
    for i in scored:
        try:
            out[i] = await _one(apdb, ccds[i], params, model, min_reliability, handoff, exclusive)
        except DmcsError as e:
            out[i] = e
    return [o for o in out if o is not None]


async def _score(ccd: CcdResults, model: ReliabilityModel | None) -> None:
    if model is not None:
        try:
            await _run(_n_sources(ccd), score_reliability, ccd, model)
        except (ValueError, TypeError, KeyError) as e:
            raise InvalidInputError(f"visit {ccd.visit} detector {ccd.detector}: {e}") from e


class _Reads(Protocol):
    """What one CCD's association uses of the APDB: an ``Apdb`` or an open
    ``ApdbTransaction`` (group commit)."""

    async def preload(
        self, region: Region, mjd: float, history_days: float = ..., *, history: bool = ...
    ) -> Preload: ...

    async def read_history(
        self, object_ids: np.ndarray, mjd: float, history_days: float = ...
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]: ...

    async def store(
        self,
        visit: int,
        detector: int,
        sources: dict[str, np.ndarray],
        objects: dict[str, np.ndarray],
        forced_sources: dict[str, np.ndarray] | None = ...,
        ss_sources: dict[str, np.ndarray] | None = ...,
        handoff: Callable[[], dict[str, Any]] | None = ...,
    ) -> StoreResult: ...


async def _associate_and_store(
    apdb: _Reads,
    ccd: CcdResults,
    params: AssociationParams,
    region: Region,
    model: ReliabilityModel | None,
    min_reliability: float | None,
    handoff: HandoffOf | None,
) -> Associated:
    try:
        preload = await apdb.preload(region, ccd.midpoint_mjd, params.history_days, history=False)
        n_work = _n_sources(ccd) + len(preload.objects["diaObjectId"])
        matched = await _run(
            n_work,
            match,
            ccd.sources,
            preload.objects,
            radius_arcsec=params.radius_arcsec,
            min_reliability=min_reliability if model is not None else None,
        )
        history, forced = await apdb.read_history(
            matched.known, ccd.midpoint_mjd, params.history_days
        )
        preload = dataclasses.replace(preload, sources=history, forced_sources=forced)
        result = await _run(n_work, summarize_matched, matched, history, forced, ccd.midpoint_mjd)
        ccd.stages["associated"] = tai_now()
        build: Callable[[], dict[str, Any]] | None = None
        built: list[dict[str, Any]] = []
        if handoff is not None:
            of = handoff

            def build() -> dict[str, Any]:
                built.append(of(ccd, result, preload))
                return built[-1]

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
    if store.stored_tai is not None:
        ccd.stages["apdbStored"] = store.stored_tai
    not_alerted = int(built[-1].get("notAlerted", 0)) if built else 0
    return Associated(result, preload, store.stored, not_alerted)


def _n_sources(ccd: CcdResults) -> int:
    return len(ccd.sources.get("diaSourceId", ccd.sources.get("ra", ())))
