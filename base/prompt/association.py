"""Association: DIASources of one CCD → DIAObjects in the APDB → a hand-off to alerts.

Each CCD is associated against a fresh APDB preload of its padded footprint, so earlier
visits' objects are seen; CCDs are associated one at a time, in arrival order. The APDB store
is atomic and keyed by (visit, detector): a repeat stores nothing and produces no alerts,
which is what makes the CCD processors' retries safe (Rubin's "at most once" after the APDB
write). Bad input puts the component in FAULT (nothing is written); ``standby`` → ``start``
→ ``enable`` recovers it and the processors' pending CCDs go through.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

from algorithms.reliability import ReliabilityModel
from base.apdb import Apdb
from base.prompt.association_step import Associated, alert_set, associate_ccd
from base.prompt.requests import CcdResults
from base.prompt.settings import AssociationSettings
from base.reliability import alert_threshold, load_reliability_model
from config.components import resolve_settings, validate_settings
from state.controller import Controller, SupervisedGroup
from state.errors import DmcsError, InvalidInputError, NotReadyError, RetriableError
from state.states import State

#: errorCode of a FAULT caused by malformed CCD results.
BAD_INPUT = 600
#: errorCode of a FAULT caused by an APDB that cannot be written (not a transient outage).
APDB_FAILED = 601


class Association(Controller):
    version = "0.1.0"
    uses_database: ClassVar[bool] = True
    event_topics = ("ccdStage", "processingStatus")

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.config = validate_settings(AssociationSettings, self.settings, name)
        self._apdb: Apdb | None = None
        self._model: ReliabilityModel | None = None
        self._threshold: float | None = None
        self._lock = asyncio.Lock()
        self._handoffs: asyncio.Queue[dict[str, Any]] = asyncio.Queue(
            self.config.max_pending_alerts
        )
        self.counts = {"associated": 0, "duplicates": 0, "rejected": 0, "handoffFailures": 0,
                       "notAlerted": 0}  # fmt: skip

    async def configure(self, override: str) -> dict[str, Any]:
        self.config, applied = resolve_settings(
            AssociationSettings, self.settings, self.name, override
        )
        return {**applied, "version": self.version}

    async def end_start(self, configuration_override: str) -> None:
        model = await asyncio.to_thread(load_reliability_model, self.config.reliability_model)
        self._threshold = alert_threshold(model, self.config.alert_reliability_threshold)
        self._model = model
        if self._apdb is None:
            self._apdb = await Apdb.connect(self.config.dsn, self.config.apdb_schema)

    async def end_standby(self) -> None:
        apdb, self._apdb = self._apdb, None
        if apdb is not None:
            await apdb.close()

    async def close(self) -> None:
        await super().close()
        await self.end_standby()

    async def run_background(self, tg: SupervisedGroup) -> None:
        tg.create_task(self._handoff_loop())
        tg.create_task(self._status_loop())

    # ------------------------------------------------------------ data plane
    async def rpc_associate(self, wire: dict[str, Any]) -> dict[str, Any]:
        """Associate and store one CCD's DIASources; see the module docstring."""
        if self.summary_state != State.ENABLED or self._apdb is None:
            raise NotReadyError(f"{self.name} is {self.summary_state.name}, not ENABLED")
        try:
            ccd = CcdResults.from_wire(wire)
        except InvalidInputError as e:
            self.counts["rejected"] += 1
            await self.fault(BAD_INPUT, f"rejected CCD results: {e}")
            raise
        async with self._lock:
            done = await self._associate_and_store(ccd)
        result, preload = done.result, done.preload
        if not done.stored:
            self.counts["duplicates"] += 1
            return {"stored": False, "duplicate": True}
        self.counts["associated"] += 1
        stages = dict(ccd.stages)
        for stage in ("associated", "apdbStored"):
            self.publish(
                "ccdStage",
                {
                    "visit": ccd.visit,
                    "detector": ccd.detector,
                    "stage": stage,
                    "stageTai": stages[stage],
                },
            )
        alerted = alert_set(done, ccd, self._threshold)
        self.counts["notAlerted"] += alerted.n_dropped
        handoff = {
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
            "stages": {**stages},
        }
        ccd.stages.update(stages)
        try:
            self._handoffs.put_nowait(handoff)
        except asyncio.QueueFull:
            self.counts["handoffFailures"] += 1
            self.log_message(
                logging.ERROR,
                f"alerts of visit {ccd.visit} detector {ccd.detector} not handed off: "
                f"{self._handoffs.maxsize} hand-offs already waiting; left for batch",
                visit=ccd.visit,
                detector=ccd.detector,
            )
        return {
            "stored": True,
            "duplicate": False,
            "nDiaSources": len(result.sources["diaSourceId"]),
            "nNew": result.n_new,
            "nMatched": result.n_matched,
            "nMoving": result.n_moving,
            "nAlerted": len(alerted.sources["diaSourceId"]),
            "stages": stages,
        }

    async def _associate_and_store(self, ccd: CcdResults) -> Associated:
        apdb = self._apdb
        if apdb is None:
            raise NotReadyError(f"{self.name} has no APDB connection")
        try:
            done = await associate_ccd(apdb, ccd, self.config, self._model, self._threshold)
        except RetriableError:
            raise
        except InvalidInputError as e:
            await self.fault(BAD_INPUT, f"rejected CCD results: {e}")
            raise
        except DmcsError as e:
            await self.fault(APDB_FAILED, f"visit {ccd.visit} detector {ccd.detector}: {e}")
            raise
        return done

    async def _handoff_loop(self) -> None:
        """Hand stored CCDs to the alert publisher; it deduplicates, so retrying is safe."""
        while True:
            handoff = await self._handoffs.get()
            peer = self.peers(self.config.alert_publisher)
            delay = 0.2
            while True:
                try:
                    await peer.call("publish", handoff)
                    break
                except RetriableError as e:
                    self.log.warning("alert publisher not ready (%s); retrying", e)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                except DmcsError as e:
                    self.counts["handoffFailures"] += 1
                    self.log_message(
                        logging.ERROR,
                        f"alerts of visit {handoff['visit']} detector {handoff['detector']} "
                        f"failed: {e}; left for batch",
                    )
                    break

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(max(self.heartbeat_interval, 1.0))
            self.publish(
                "processingStatus",
                {**self.counts, "pendingHandoffs": self._handoffs.qsize()},
                "telemetry",
            )
