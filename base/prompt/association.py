"""Association: DIASources of one CCD → DIAObjects in the APDB → a hand-off to alerts.

Each CCD is associated against a fresh APDB preload of its padded footprint, so earlier
visits' objects are seen; CCDs are associated one at a time, in arrival order. With
``[association] partitions`` > 1 there is one such actor per partition of the sky (HEALPix
tiles, ``base.prompt.partitions`` routes each CCD to one), all storing into one APDB at once:
each CCD then holds its padded footprint's region lock from preload to commit
(``base.apdb.region_lock``), so two CCDs that could share a DiaObject are still associated one
after the other and no border makes a duplicate object. The APDB store
is atomic and keyed by (visit, detector): a repeat stores nothing and produces no alerts,
which is what makes the CCD processors' retries safe (Rubin's "at most once" after the APDB
write). The hand-off to alerts is a row of the APDB's alert outbox written in that same
transaction (``base.apdb.outbox``), which AlertPublisher drains: a CCD stored is a CCD whose
alerts are owed, whatever dies after the commit. Malformed CCD results are refused with an
``InvalidInputError`` to the processor that sent them (nothing is written; that CCD is
recorded as failed) while Association keeps serving the others; an APDB that cannot be
written puts it in FAULT, and ``standby`` → ``start`` → ``enable`` recovers it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, ClassVar

from algorithms.reliability import ReliabilityModel
from base.apdb import Apdb
from base.apdb.warm import warm_up_codecs
from base.prompt.association_step import Associated, alert_handoff, associate_ccds
from base.prompt.requests import CcdResults
from base.prompt.settings import AssociationSettings
from base.reliability import alert_threshold, load_reliability_model
from base.warm_up import log_failure, needs_warm_up, wait_for_warm_up
from state.controller import Controller, SupervisedGroup
from state.errors import DmcsError, InvalidInputError, NotReadyError, RetriableError
from state.states import State

#: errorCode of a FAULT caused by an APDB that cannot be written (not a transient outage).
APDB_FAILED = 601
#: The most CCDs stored in one transaction (group commit).
GROUP_COMMIT_MAX = 32


class Association(Controller):
    uses_database: ClassVar[bool] = True
    event_topics = ("ccdStage", "processingStatus")
    held_topics = ("ccdStage",)
    settings_model = AssociationSettings
    config: AssociationSettings

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self._apdb: Apdb | None = None
        self._model: ReliabilityModel | None = None
        self._threshold: float | None = None
        self._lock = asyncio.Lock()
        #: CCDs waiting for the batch being stored to commit, with their outcomes' futures.
        self._waiting: list[tuple[CcdResults, asyncio.Future[Associated | DmcsError]]] = []
        #: The APDB codecs' warm-up (a thread: it cannot be cancelled, and it is short).
        self._warming: asyncio.Future[float] | None = None
        self.counts = {"associated": 0, "duplicates": 0, "rejected": 0, "notAlerted": 0}

    async def end_start(self, configuration_override: str) -> None:
        model = await asyncio.to_thread(load_reliability_model, self.config.reliability_model)
        self._threshold = alert_threshold(model, self.config.alert_reliability_threshold)
        self._model = model
        if self._apdb is None:
            self._apdb = await Apdb.connect(self.config.dsn, self.config.apdb_schema)
        if needs_warm_up(self._warming):
            self._warming = asyncio.ensure_future(asyncio.to_thread(warm_up_codecs))
            self._warming.add_done_callback(log_failure(self, "APDB codecs"))
        await wait_for_warm_up(self, self._warming, "APDB codecs", self.config.warm_up_wait)

    async def end_standby(self) -> None:
        apdb, self._apdb = self._apdb, None
        if apdb is not None:
            await apdb.close()

    async def close(self) -> None:
        await super().close()
        await self.end_standby()

    async def run_background(self, tg: SupervisedGroup) -> None:
        tg.create_task(self._status_loop)

    # ------------------------------------------------------------ data plane
    async def rpc_associate(self, wire: dict[str, Any]) -> dict[str, Any]:
        """Associate and store one CCD's DIASources; see the module docstring."""
        if self.summary_state != State.ENABLED or self._apdb is None:
            raise NotReadyError(f"{self.name} is {self.summary_state.name}, not ENABLED")
        try:
            ccd = CcdResults.from_wire(wire)
        except InvalidInputError as e:
            self._refuse(wire, e)
            raise
        done = await self._associate_and_store(ccd)
        result = done.result
        if not done.stored:
            self.counts["duplicates"] += 1
            earlier = await self._earlier(ccd)
            return {"stored": False, "duplicate": True, **earlier}
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
        return {
            "stored": True,
            "duplicate": False,
            "nDiaSources": len(result.sources["diaSourceId"]),
            "nNew": result.n_new,
            "nMatched": result.n_matched,
            "nMoving": result.n_moving,
            "nAlerted": len(result.sources["diaSourceId"]) - done.not_alerted,
            "stages": stages,
        }

    async def rpc_counts(self) -> dict[str, Any]:
        """This partition's counts since start (what ``processingStatus`` reports)."""
        return {"partition": self.config.partition, **self.counts}

    async def _associate_and_store(self, ccd: CcdResults) -> Associated:
        """Queue ``ccd`` and wait for its outcome. The CCDs that queue while a batch is being
        stored are stored together next, in one transaction (group commit, up to
        :data:`GROUP_COMMIT_MAX`), in arrival order."""
        done: asyncio.Future[Associated | DmcsError] = asyncio.get_running_loop().create_future()
        self._waiting.append((ccd, done))
        async with self._lock:
            if not done.done():
                batch = self._waiting[:GROUP_COMMIT_MAX]
                del self._waiting[:GROUP_COMMIT_MAX]
                try:
                    outcomes = await self._store_batch([c for c, _ in batch])
                    for (_, f), outcome in zip(batch, outcomes, strict=True):
                        f.set_result(outcome)
                finally:
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(RetriableError("the CCD's batch was interrupted"))
        outcome = await done
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _store_batch(self, ccds: list[CcdResults]) -> list[Associated | DmcsError]:
        apdb = self._apdb
        if apdb is None:
            raise NotReadyError(f"{self.name} has no APDB connection")
        outcomes = await associate_ccds(
            apdb,
            ccds,
            self.config,
            self._model,
            self._threshold,
            handoff=functools.partial(alert_handoff, min_reliability=self._threshold),
            exclusive=self.config.partitions > 1,
        )
        faulted = False
        for ccd, done in zip(ccds, outcomes, strict=True):
            if isinstance(done, RetriableError):
                continue
            if isinstance(done, InvalidInputError):
                self._refuse({"visit": ccd.visit, "detector": ccd.detector}, done)
            elif isinstance(done, DmcsError):
                if not faulted:
                    faulted = True
                    await self.fault(
                        APDB_FAILED, f"visit {ccd.visit} detector {ccd.detector}: {done}"
                    )
            elif done.stored:
                self.counts["notAlerted"] += done.not_alerted
        return outcomes

    def _refuse(self, wire: Any, error: InvalidInputError) -> None:
        """Count and log one CCD's malformed results; the sender gets the error."""
        self.counts["rejected"] += 1
        where = wire if isinstance(wire, dict) else {}
        self.log_message(
            logging.ERROR,
            f"refused the CCD results of visit {repr(where.get('visit'))[:40]} detector "
            f"{repr(where.get('detector'))[:40]}: {error}",
        )

    async def _earlier(self, ccd: CcdResults) -> dict[str, Any]:
        """The DIASource count and stage times of the earlier store a retry repeats."""
        if self._apdb is None:
            return {}
        try:
            return await self._apdb.earlier_store(ccd.visit, ccd.detector)
        except DmcsError as e:
            self.log.warning("earlier store of %s/%s not read: %s", ccd.visit, ccd.detector, e)
            return {}

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(max(self.heartbeat_interval, 1.0))
            self.publish(
                "processingStatus",
                dict(self.counts),
                "telemetry",
            )
