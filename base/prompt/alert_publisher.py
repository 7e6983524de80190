"""AlertPublisher: one Rubin-schema alert per DIASource, archived, then offered to the stream.

The CCDs to publish are the rows of the APDB's alert outbox (``base.apdb.outbox``), written
by Association in the APDB store's own transaction. While ENABLED the publisher drains them,
oldest first, woken by the outbox's NOTIFY and, failing that, by a poll; a row is marked done
only after its alerts are archived, so a publisher killed at any point drains it again after
its restart. Publication is idempotent per (visit, detector): the archive claims the batch in
PostgreSQL, and a repeat publishes nothing, so no broker ever sees an alert twice. Latency is
measured from the CCD's end of readout (carried in its stage times) to publication.

An archive that cannot be written (its files or its index) puts the publisher in FAULT: nothing
is streamed that is not archived, and the row stays pending until the publisher is repaired and
ENABLED again. ``publish`` offers one hand-off directly (the same idempotent path).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any, ClassVar

import asyncpg
import numpy as np

from base.alerts import AlertArchive, alert_table
from base.alerts.avro_columnar import encode_alert_batch
from base.alerts.batch import AlertBatch, BufferPool
from base.alerts.schema import AlertSchema, latest_schema
from base.alerts.spool import AlertSpool, AlertStreamRpc
from base.alerts.warm import warm_up_encoder
from base.apdb import outbox
from base.apdb.outbox import AlertOutbox
from base.db import connect_pool
from base.prompt.settings import AlertPublisherSettings
from base.prompt.visit_tracker import VisitLatency, VisitTracker
from base.prompt_records import PromptRecords, VisitRecord
from base.warm_up import log_failure, needs_warm_up, wait_for_warm_up
from state.clock import tai_now
from state.contracts.data_plane import AlertHandoff
from state.controller import Controller, SupervisedGroup
from state.errors import DmcsError, InvalidInputError, NotReadyError, RetriableError, StorageError
from state.events import Event
from state.fanout import TopicFilter
from state.states import State

#: Sky positions sent per CCD in ``alertsPublished`` for the dashboard's sky map.
MAX_POSITIONS = 50
#: errorCode of a FAULT caused by an alert archive that cannot be written.
ARCHIVE_FAILED = 500
#: Seconds ``standby`` lets the outbox drain in flight finish its row before cancelling it.
DRAIN_STOP_WAIT_S = 10.0


class AlertPublisher(Controller, AlertStreamRpc):
    uses_database: ClassVar[bool] = True
    event_topics = ("alertsPublished", "visitLatency", "processingStatus")
    listen_components = ("*",)
    listen_topics = ("nextVisit", "ccdProcessed")
    held_topics = ("alertsPublished",)
    settings_model = AlertPublisherSettings
    config: AlertPublisherSettings

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self._archive: AlertArchive | None = None
        self._pool: asyncpg.Pool | None = None
        self._records: PromptRecords | None = None
        self._schema: AlertSchema | None = None
        self.spool = AlertSpool()
        self.buffers = BufferPool()
        self.tracker = VisitTracker(self.config.latency_budget)
        self._outbox: AlertOutbox | None = None
        self._listener: asyncpg.Connection | None = None
        self._wake = asyncio.Event()
        self._publishing = asyncio.Lock()
        #: The outbox drain in flight (owned by ``_drain_loop``, which awaits it).
        self._drain_in_flight: asyncio.Task[float] | None = None
        #: The alert encoder's warm-up (a thread: it cannot be cancelled, and it is short).
        self._warming: asyncio.Future[float] | None = None
        #: The outbox's rows pending, published and failed, as of the last status.
        self._outbox_state: dict[str, int] = {}
        self._recount = True
        self.counts = {"published": 0, "alerts": 0, "duplicates": 0, "unpublishable": 0}

    async def end_start(self, configuration_override: str) -> None:
        if self._archive is None:
            self._schema = await asyncio.to_thread(latest_schema)
            self._archive = await AlertArchive.open(
                self.config.dsn,
                self.data_dir.absolute() / "archive",
                self.config.archive_schema,
                self._schema,
            )
            self.alert_archive = self._archive
            # the stream's live head starts after what is archived already (resume positions)
            _, newest = await self._archive.positions()
            self.spool.position = max(self.spool.position, newest)

        if self._pool is None:
            self._pool = await connect_pool(
                self.config.dsn, min_size=1, max_size=2, what="alert publisher", stateless=True
            )
            self._records = await PromptRecords.connect(self._pool, self.config.records_schema)
            self._outbox = await AlertOutbox.open(self._pool, self.config.apdb_schema)
        if self._listener is None:
            self._listener = await self._listen()
        if needs_warm_up(self._warming):
            schema = self._schema or latest_schema()
            # its own pool: the warm-up thread may still run when the first batch is encoded
            self._warming = asyncio.ensure_future(
                asyncio.to_thread(warm_up_encoder, schema, BufferPool(granule=1 << 16))
            )
            self._warming.add_done_callback(log_failure(self, "alert encoder"))
        await wait_for_warm_up(self, self._warming, "alert encoder", self.config.warm_up_wait)

    async def _listen(self) -> asyncpg.Connection | None:
        """A connection that wakes the drain on each new outbox row; None: poll only."""
        try:
            conn = await asyncpg.connect(self.config.dsn)
            await conn.add_listener(
                outbox.channel(self.config.apdb_schema), lambda *_: self._wake.set()
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            self.log_message(logging.WARNING, f"outbox notifications unavailable ({e}); polling")
            return None
        return conn

    async def end_enable(self) -> None:
        self._wake.set()

    async def end_standby(self) -> None:
        await self._stop_drain()
        archive, self._archive = self._archive, None
        self.alert_archive = None
        if archive is not None:
            await archive.close()
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await listener.close(timeout=5)
        pool, self._pool, self._records, self._outbox = self._pool, None, None, None
        if pool is not None:
            await pool.close()

    async def close(self) -> None:
        await super().close()
        await self.end_standby()

    async def run_background(self, tg: SupervisedGroup) -> None:
        tg.create_task(self._status_loop)
        tg.create_task(self._drain_loop)

    def listen_filter(self) -> TopicFilter:
        """Of ``ccdProcessed``, only the failed CCDs' (the others' alerts come by the outbox)."""
        return TopicFilter.of(self.listen_components, self.listen_topics, None, ["ccdProcessed"])

    async def on_event(self, event: Event) -> None:
        data = event.data
        if event.topic == "nextVisit" and "detectors" in data:
            self.tracker.expect(int(data["visit"]), list(data["detectors"]))
            await self._record_visit(data)
        elif event.topic == "ccdProcessed" and int(data.get("statusCode", 0)) != 0:
            self._report(self.tracker.failed(int(data["visit"]), int(data["detector"])))

    # ------------------------------------------------------------ the outbox
    async def _drain_loop(self) -> None:
        """Drain the outbox whenever woken (NOTIFY, enable) or every ``outbox_poll`` seconds.

        Each drain is a task of its own, so that ``standby`` can wait for it (or cancel it)
        before it closes the pool the drain reads and marks rows with."""
        delay = self.config.outbox_poll
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
            delay = self.config.outbox_poll
            if self.summary_state != State.ENABLED:
                continue
            task = asyncio.create_task(self._drain_once(), name=f"{self.name}-drain")
            self._drain_in_flight = task
            try:
                await asyncio.wait({task})
            finally:
                if not task.done():  # this loop was cancelled: so is its drain
                    task.cancel()
                    await asyncio.wait({task})
                self._drain_in_flight = None
            if not task.cancelled():
                delay = task.result()

    async def _drain_once(self) -> float:
        """One drain of the outbox; the seconds to wait before the next unless woken."""
        try:
            self._recount = await self.drain() > 0 or self._recount
            if self._listener is not None and self._listener.is_closed():
                self._listener = await self._listen()  # lost with a database restart
        except RetriableError as e:
            self.log.warning("alert outbox not drained now (%s); retrying", e)
            return min(self.config.outbox_poll, 1.0)
        except DmcsError as e:
            self.log_message(logging.ERROR, f"alert outbox not drained: {e}")
        return self.config.outbox_poll

    async def _stop_drain(self) -> None:
        """Let the drain in flight finish the row it is on (it stops there: the publisher is
        no longer ENABLED), or cancel it after ``DRAIN_STOP_WAIT_S``; a cancelled row stays
        pending and is drained again (publication is idempotent per CCD)."""
        task = self._drain_in_flight
        if task is None or task.done():
            return
        done, _ = await asyncio.wait({task}, timeout=DRAIN_STOP_WAIT_S)
        if not done:
            self.log.warning("the alert outbox drain did not stop within %s s; cancelled",
                             DRAIN_STOP_WAIT_S)  # fmt: skip
            task.cancel()
            await asyncio.wait({task})

    async def drain(self) -> int:
        """Publish every pending outbox row, oldest first; the number of rows done."""
        done = 0
        while self.summary_state == State.ENABLED and self._outbox is not None:
            box = self._outbox
            rows = await box.pending()
            if not rows:
                break
            for row in rows:
                try:
                    handoff = outbox.decode(row.meta, row.payload)
                except InvalidInputError as e:
                    await self._outbox_failed(box, row.visit, row.detector, str(e))
                    continue
                try:
                    reply = await self.rpc_publish(handoff)
                except InvalidInputError as e:
                    await self._outbox_failed(box, row.visit, row.detector, str(e))
                    continue
                # A duplicate: archived by a publisher that died before marking the row.
                n = reply["published"]
                if reply["duplicate"]:
                    n = len(handoff["sources"]["diaSourceId"])
                await box.done(row.visit, row.detector, int(n))
                done += 1
        return done

    async def _outbox_failed(self, box: AlertOutbox, visit: int, detector: int, why: str) -> None:
        self.counts["unpublishable"] += 1
        self._recount = True
        self.log_message(
            logging.ERROR,
            f"alerts of visit {visit} detector {detector} cannot be published: {why};"
            " left in the outbox for batch",
            visit=visit,
            detector=detector,
        )
        await box.failed(visit, detector, why)

    # ------------------------------------------------------------ data plane
    async def rpc_publish(self, handoff: dict[str, Any]) -> dict[str, Any]:
        """Publish one CCD's hand-off (idempotent per (visit, detector))."""
        async with self._publishing:
            return await self._publish(handoff)

    async def _publish(self, handoff: dict[str, Any]) -> dict[str, Any]:
        if self.summary_state != State.ENABLED or self._archive is None or self._schema is None:
            raise NotReadyError(f"{self.name} is {self.summary_state.name}, not ENABLED")
        checked = AlertHandoff.parse(handoff)
        visit, detector, sources = checked.visit, checked.detector, checked.sources
        stages: dict[str, float] = dict(checked.stages)
        batch = await asyncio.to_thread(self._encode, handoff, self._schema, self.buffers)
        n = len(batch)
        try:
            position = await self._archive.archive(
                checked.dayObs, visit, detector, batch.ids.tolist(), batch.packets()
            )
        except StorageError as e:
            await self.fault(ARCHIVE_FAILED, f"visit {visit} detector {detector}: {e}")
            raise NotReadyError(
                f"{self.name} went to FAULT: its alert archive failed ({e}); not published"
            ) from e
        if n and position is None:
            self.counts["duplicates"] += 1
            # Archived by a publisher that died before recording it; the first record wins.
            await self._record_published(visit, detector, n, tai_now())
            return {"published": 0, "duplicate": True}
        table = alert_table(sources, handoff.get("objects"), handoff.get("ssSources"))
        self.spool.publish(visit, detector, batch.ids, batch, table, position=position)
        now = tai_now()
        stages["alertsPublished"] = now
        latency = now - stages["endReadout"] if "endReadout" in stages else float("nan")
        self.counts["published"] += 1
        self.counts["alerts"] += n
        positions = np.column_stack(
            [np.asarray(sources["ra"])[:MAX_POSITIONS], np.asarray(sources["dec"])[:MAX_POSITIONS]]
        )
        self.publish(
            "alertsPublished",
            {
                "visit": visit,
                "detector": detector,
                "nAlerts": n,
                "latencySeconds": _finite(latency),
                "positions": positions.round(6).tolist(),
                "stages": stages,
            },
        )
        self._report(self.tracker.published(visit, detector, n, latency))
        await self._record_published(visit, detector, n, now)
        return {"published": n, "duplicate": False, "stages": stages}

    async def _record_visit(self, data: dict[str, Any]) -> None:
        if self._records is None:
            return
        try:
            await self._records.record_visit(
                VisitRecord(
                    visit=int(data["visit"]),
                    day_obs=int(data["dayObs"]),
                    camera=str(data.get("camera", "")),
                    band=str(data.get("band", "")),
                    ra=float(data["ra"]),
                    dec=float(data["dec"]),
                    obs_mjd=float(data["startMjd"]),
                    exposure_time=float(data["exposureTime"]),
                    n_detectors=len(data["detectors"]),
                    field_id=int(data["fieldId"]) if data.get("fieldId") is not None else None,
                )
            )
        except (KeyError, TypeError, ValueError, DmcsError) as e:
            self.log_message(logging.WARNING, f"visit not recorded: {e}")

    async def _record_published(self, visit: int, detector: int, n: int, tai: float) -> None:
        if self._records is None:
            return
        try:
            await self._records.record_alerts(visit, detector, n, tai)
        except DmcsError as e:
            self.log_message(logging.WARNING, f"latency of visit {visit} not recorded: {e}")

    @staticmethod
    def _encode(handoff: dict[str, Any], schema: AlertSchema, pool: BufferPool) -> AlertBatch:
        return encode_alert_batch(
            handoff["sources"],
            objects=handoff.get("objects"),
            history=handoff.get("history"),
            forced_history=handoff.get("forcedHistory"),
            ss_sources=handoff.get("ssSources"),
            cutouts=handoff.get("cutouts") or None,
            schema=schema,
            pool=pool,
        )

    def _report(self, done: VisitLatency | None) -> None:
        if done is None:
            return
        self.publish(
            "visitLatency",
            {
                "visit": done.visit,
                "nAlerts": done.n_alerts,
                "nCcds": done.n_ccds,
                "nFailed": done.n_failed,
                "latencySeconds": _finite(done.latency_seconds),
                "withinBudget": done.within_budget,
            },
        )
        if done.latency_seconds is not None and done.latency_seconds > self.config.latency_budget:
            self.log_message(
                logging.WARNING,
                f"visit {done.visit}: alerts {done.latency_seconds:.1f} s after end of readout "
                f"(budget {self.config.latency_budget:.0f} s)",
            )

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(max(self.heartbeat_interval, 1.0))
            # Counted here, at most once a status and only after rows were drained (a count
            # scans the whole outbox), not after each CCD's drain.
            if self._recount and self._outbox is not None and self.summary_state == State.ENABLED:
                self._recount = False
                try:
                    self._outbox_state = await self._outbox.counts()
                except DmcsError as e:
                    self._recount = True
                    self.log.warning("alert outbox not counted now: %s", e)
            self.publish(
                "processingStatus",
                {
                    **self.counts,
                    "spooledBatches": self.spool.head,
                    "evicted": self.spool.evicted,
                    **{f"outbox{k.capitalize()}": v for k, v in self._outbox_state.items()},
                },
                "telemetry",
            )


def _finite(seconds: float | None) -> float | None:
    """A latency for the wire: unknown (no endReadout stage) is null, never NaN."""
    return seconds if seconds is not None and math.isfinite(seconds) else None
