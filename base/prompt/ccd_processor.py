"""CcdProcessor: one of a pool; preloads on ``nextVisit``, processes ingested CCDs.

Detector ``d`` is preloaded by the processor with ``index == d % pool_size``. Which processor
processes a CCD is :mod:`base.prompt.pool_scheduler`'s choice: that one (``scheduling =
"fixed"``), or any idle one of the pool holding the CCD's claim (``"availability"``, the
default: the preloading processor first, another when it leaves the CCD waiting). The CPU
work runs in a child process (:mod:`base.isolated`), the same one CCD after CCD, so that a
hung CCD is abandoned by killing it (the next CCD gets a fresh child). Work is listed
durably (:mod:`base.prompt.work_queue`) before it is acknowledged, so an actor killed mid-CCD
finds it again when it is enabled after its restart.

Inputs come from the registry: calibrations, template and reference catalogue are looked up
for each CCD (:mod:`base.prompt.registry_inputs`) and handed to the child as plain paths
with their registered checksums, which the child verifies as it reads them. The child
decodes calibrations once per node into the pool's shared cache (:mod:`base.input_cache`)
and memory-maps them after that, and decodes a CCD's template at each preload
(``base.ccd_inputs.read_template``); how each CCD is recorded is
:mod:`base.prompt.ccd_recording`'s.

Failure policy (Rubin's, DMTN-260): a CCD is retried only before its APDB write. A worker
that dies is retried up to ``max_attempts``; an association peer that is not ready is waited
for up to ``association_wait``; a timeout abandons the CCD; bad data fails it at once. Once
Association has stored the CCD, it is never processed again (a repeat is a no-op there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, ParamSpec, TypeVar

import asyncpg

from base.ccd_inputs import ResolvedInputs
from base.db import connect_pool
from base.isolated import IsolatedWorker, RemoteError, WorkerDiedError, WorkTimeoutError
from base.prompt.ccd_recording import CcdRecording
from base.prompt.outcomes import Outcome, failure, success
from base.prompt.overload import DEFERRED
from base.prompt.partitions import association_peer
from base.prompt.pool_member import PoolMember
from base.prompt.pool_scheduler import PoolScheduler
from base.prompt.registry_inputs import resolve_inputs
from base.prompt.registry_reconcile import RegistryReconciliation
from base.prompt.settings import CcdProcessorSettings
from base.prompt.stage_writer import StageWriter
from base.prompt.work_queue import WorkItem, WorkQueue
from base.prompt_records import PromptRecords
from base.prompt_records.claims import ClaimStore
from base.registry.records import RawRecord
from base.registry.repository import Repository
from base.warm_up import log_failure, wait_for_warm_up
from state.clock import tai_now
from state.contracts.data_plane import AssociateReply, CcdWorkResult
from state.contracts.values import ContractError
from state.controller import Controller, SupervisedGroup
from state.durable_sqlite import SqliteThread
from state.errors import (
    DmcsError,
    InvalidInputError,
    NotReadyError,
    RetriableError,
    StorageError,
)
from state.events import Event
from state.fanout import DetectorShare, TopicFilter
from state.states import State
from state.waiting import wait_event

WORK = "base.prompt.ccd_work"
#: The pool's decoded-input cache, beside the processors' data directories (by default).
CACHE = "ccd-input-cache"
#: errorCode of a FAULT caused by a durable work list that cannot be read or written.
WORK_LIST_FAILED = 400
#: Registry answers of preloaded CCDs kept for their processing (a few visits' worth).
MAX_RESOLVED = 1024
P = ParamSpec("P")
T = TypeVar("T")


#: The per-CCD events a processor hears only for its own detectors with fixed scheduling.
PER_CCD_TOPICS = frozenset({"imageInBuffer", "imageIngested"})


class CcdProcessor(CcdRecording, PoolMember, RegistryReconciliation, Controller):
    uses_database: ClassVar[bool] = True
    event_topics = ("ccdStage", "ccdProcessed", "processingStatus", "overloadAlarm")
    listen_components = ("Camera", "SummitBuffer", "Ingest")
    listen_topics = ("nextVisit", "endReadout", "imageInBuffer", "imageIngested")
    held_topics = ("ccdStage",)
    settings_model = CcdProcessorSettings
    config: CcdProcessorSettings

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.queue = WorkQueue(self.data_dir / "work.sqlite")
        self._queue_thread = SqliteThread(f"{name}-work-list")
        self.worker = IsolatedWorker(f"{name}-worker")
        self._pool: asyncpg.Pool | None = None
        self._records: PromptRecords | None = None
        self._repository: Repository | None = None
        self._stages: dict[tuple[int, int], dict[str, float]] = {}
        self._preloads: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        #: The registry's answer for each CCD preloaded here, reused when it is processed.
        self._resolved: OrderedDict[tuple[int, int], ResolvedInputs] = OrderedDict()
        self._wakeup = asyncio.Event()
        self.counts = {"processed": 0, "failed": 0, "abandoned": 0, "retried": 0, "reconciled": 0,
                       DEFERRED: 0}  # fmt: skip
        self._alarmed = False
        self._init_reconciliation()
        self.stage_writer = StageWriter(self.log_message, self.log, self.config.retry_backoff)
        self._headerless: set[tuple[int, int]] = set()
        self._headerless_visits: set[int] = set()
        self._warming: asyncio.Task[Any] | None = None
        self._warm_pid: int | None = None
        self.scheduler = PoolScheduler(name, self.queue, self._q, lambda: self.config, self._passed)

    async def _q(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a work-list call on its own thread: its fsync never blocks the event loop."""
        return await self._queue_thread.run(fn, *args, **kwargs)

    @property
    def input_cache(self) -> tuple[str, int] | None:
        """The decoded-input cache the pool's workers share (directory, bytes), if any."""
        cfg = self.config
        if cfg.input_cache_gb <= 0:
            return None
        root = Path(cfg.input_cache_dir) if cfg.input_cache_dir else self.data_dir.parent / CACHE
        return str(root.resolve()), int(cfg.input_cache_gb * 2**30)

    def owns(self, detector: int) -> bool:
        """Whether this processor preloads ``detector`` (its inputs are in its worker)."""
        return self.scheduler.owns(detector)

    def listen_filter(self) -> TopicFilter:
        """Only this processor's own detectors' ``imageInBuffer`` (and, with fixed scheduling,
        ``imageIngested``): the others' are no use to it (see :meth:`_on_event`)."""
        c = self.config
        topics = {"imageInBuffer"} if self.scheduler.by_availability else PER_CCD_TOPICS
        share = DetectorShare(c.pool_size, c.index, frozenset(topics))
        return TopicFilter.of(self.listen_components, self.listen_topics, share)

    async def end_start(self, configuration_override: str) -> None:
        await self._q(self.queue.reopen)  # SQLite keeps a failed connection broken
        if self._pool is None:
            pool = await connect_pool(
                self.config.dsn, min_size=1, max_size=2, what="CCD processor", stateless=True
            )
            try:
                records = await PromptRecords.connect(pool, self.config.records_schema)
                claims = await ClaimStore.connect(pool, self.config.records_schema)
            except BaseException:
                pool.terminate()  # a refused start keeps no connection; the next one reconnects
                raise
            self._pool, self._records = pool, records
            self.scheduler.claims = claims
            self.stage_writer.connected(records)
        if self._repository is None:
            self._repository = await Repository.connect(
                self.config.dsn, self.config.registry_schema
            )
        await self._warm_up()

    async def _warm_up(self) -> None:
        """Start the worker and run the chain once on a simulated CCD (once per worker
        process), so that the first visit finds the kernels compiled and the modules loaded;
        a warm-up that start stops waiting for runs in the worker before its first preload.
        A chain that fails here would fail every CCD: start fails with it."""
        if self._warm_pid is not None and self._warm_pid == self.worker.pid:
            return
        if self._warming is None or self._warming.done():
            self._warming = asyncio.create_task(self._run_warm_up(), name="warm_up")
            self._warming.add_done_callback(log_failure(self, "CCD processing"))
        await wait_for_warm_up(self, self._warming, "CCD processing", self.config.warm_up_wait)

    async def _run_warm_up(self) -> None:
        done = await self.worker.run(f"{WORK}:warm_up", timeout=self.config.warm_up_timeout)
        self._warm_pid = self.worker.pid
        self.log.info(
            "warm-up done in %.1f s (%.1f s waiting for another's; pid %s)",
            done["seconds"], done["waitedSeconds"], self._warm_pid,
        )  # fmt: skip

    async def end_standby(self) -> None:
        warming, self._warming = self._warming, None
        if warming is not None and not warming.done():
            warming.cancel()
            with contextlib.suppress(asyncio.CancelledError, DmcsError):
                await warming
        pool, self._pool, self._records = self._pool, None, None
        self.scheduler.claims = None
        self.stage_writer.connected(None)
        if pool is not None:
            await pool.close()
        repository, self._repository = self._repository, None
        if repository is not None:
            await repository.close()

    async def close(self) -> None:
        await super().close()
        await self.end_standby()
        self.worker.close()
        await self._q(self.queue.close)
        self._queue_thread.close()

    async def handle_summary_state(self) -> None:
        if self.summary_state == State.ENABLED:
            recovered = await self._q(self.queue.recover)
            for item in recovered:
                await self._record(
                    item,
                    failure("actor_died", "interrupted by a restart", recovery="retried"),
                    final=False,
                )
            if recovered:
                self.log_message(logging.WARNING, f"{len(recovered)} interrupted CCD(s) requeued")
            await self._reconcile()
            self._wakeup.set()

    async def run_background(self, tg: SupervisedGroup) -> None:
        tg.create_task(lambda: self._keep_running(self._work_loop), name="work_loop")
        tg.create_task(lambda: self._keep_running(self._status_loop), name="status_loop")
        tg.create_task(lambda: self._keep_running(self._reconcile_loop), name="reconcile_loop")
        tg.create_task(lambda: self._keep_running(self._claims_loop), name="claims_loop")
        tg.create_task(self.stage_writer.run, name="stage_writer")

    async def _keep_running(self, loop: Callable[[], Awaitable[None]]) -> None:
        """Run ``loop`` for good: a broken work list faults the component, the loop goes on."""
        while True:
            try:
                await loop()
            except StorageError as e:
                await self._work_list_failed(e)

    async def _work_list_failed(self, error: StorageError) -> None:
        if self.summary_state not in (State.ENABLED, State.DISABLED):
            # A call that began before standby and failed after it: start reopens the list.
            self.log.warning("work list failed outside ENABLED/DISABLED: %s", error)
            return
        await self.fault(
            WORK_LIST_FAILED,
            f"durable work list {self.queue.path} unusable ({error}); "
            "repair or remove it, then standby and start",
        )

    # ---------------------------------------------------------------- events
    async def on_event(self, event: Event) -> None:
        try:
            await self._on_event(event)
        except StorageError as e:
            await self._work_list_failed(e)

    async def _on_event(self, event: Event) -> None:
        data = event.data
        try:
            visit = int(data["visit"])
        except (KeyError, TypeError, ValueError):
            return
        if event.topic == "nextVisit":
            mine = [int(d) for d in data.get("detectors", ()) if self.owns(int(d))]
            if mine or self.scheduler.by_availability:
                await self._q(self.queue.remember_visit, visit, dict(data))
                for detector in mine:
                    self._preloads.put_nowait((visit, detector))
                self._wakeup.set()
        elif event.topic == "endReadout":
            for detector in data.get("detectors", ()):
                if self.owns(int(detector)):
                    self._stage(visit, int(detector), "endReadout", event.tai, announce=False)
        elif "detector" in data and self.owns(int(data["detector"])):
            detector = int(data["detector"])
            if event.topic == "imageInBuffer":
                self._stage(visit, detector, "inBuffer", event.tai, announce=False)
            elif event.topic == "imageIngested":
                await self._ingested(visit, detector, event)
        elif event.topic == "imageIngested" and "detector" in data:
            ok = int(data.get("statusCode", 0)) == 0
            if ok and self.scheduler.serves(int(data["detector"])):
                # another's, taken if left
                await self._q(self.queue.enqueue, visit, int(data["detector"]))
                self._wakeup.set()

    async def _ingested(self, visit: int, detector: int, event: Event) -> None:
        self._stage(visit, detector, "ingested", event.tai, announce=False)
        if int(event.data.get("statusCode", 0)) != 0:
            item = WorkItem(visit, detector, "failed", 0, "")
            await self._finish(item, failure("ingest_failed", str(event.data.get("description"))))
            return
        if await self._q(self.queue.enqueue, visit, detector):
            self._wakeup.set()

    # ------------------------------------------------------------------ work
    async def _work_loop(self) -> None:
        wait: float | None = None
        while True:
            await wait_event(self._wakeup, wait)
            self._wakeup.clear()
            wait = None
            while self.summary_state == State.ENABLED:
                if not self._preloads.empty():
                    await self._preload(*self._preloads.get_nowait())
                    continue
                try:
                    item, wait = await self.scheduler.next()
                except NotReadyError as e:
                    self.log.warning("no CCD claimed: %s", e)
                    wait = self.config.retry_backoff
                    break
                finally:
                    await self._defer(self.scheduler.take_deferred())
                if item is None:
                    break
                if item.attempts > self.config.max_attempts:
                    reason = f"{item.attempts - 1} attempt(s) interrupted (processor lost)"
                    await self._finish(item, failure("actor_died", reason))
                    continue
                began = time.monotonic()
                try:
                    await self._process(item)
                    took = time.monotonic() - began
                    last = self.scheduler.ccd_seconds
                    self.scheduler.ccd_seconds = took if last == 0 else 0.8 * last + 0.2 * took
                except Exception as e:
                    self.log.exception("visit %s detector %s", item.visit, item.detector)
                    await self._finish(item, failure("internal_error", repr(e)))

    async def _preload(self, visit: int, detector: int) -> None:
        info = await self._q(self.queue.visit_info, visit)
        if info is None or await self._q(self.queue.known, visit, detector):
            return
        try:
            source = await self._inputs(info, detector)
            await self.worker.run(
                f"{WORK}:preload", source, info, detector, cache=self.input_cache,
                timeout=self.config.ccd_timeout,
            )  # fmt: skip
            self._resolved[(visit, detector)] = source
            while len(self._resolved) > MAX_RESOLVED:
                self._resolved.popitem(last=False)
            self._stage(visit, detector, "preloadReady", tai_now())
        except DmcsError as e:
            self.log.warning("preload of visit %s detector %s failed: %s", visit, detector, e)

    async def _process(self, item: WorkItem) -> None:
        info = await self._visit_info(item.visit)
        if info is None:
            reason = "neither nextVisit nor the registry describes this visit"
            await self._finish(item, failure("bad_input", reason))
            return
        try:
            raw = await self._raw_path(item.visit, item.detector)
            self._note_header(item, raw.header_merged)
            source = self._resolved.pop((item.visit, item.detector), None)
            if source is None:
                source = await self._inputs(info, item.detector)
            # the raw as registered: the worker checks it against the file's checksum
            source = replace(source, raw=Path(raw.path), raw_checksum=raw.file_checksum)
            if item.detector in self.config.stall_detectors and self.config.stall_seconds > 0:
                await self.worker.run(
                    f"{WORK}:stall", self.config.stall_seconds, timeout=self.config.ccd_timeout
                )
            result = await self.worker.run(
                f"{WORK}:process", source, info, item.detector, raw.path,
                cache=self.input_cache, timeout=self.config.ccd_timeout,
            )  # fmt: skip
        except WorkTimeoutError as e:
            await self._finish(item, failure("timeout", str(e), status="abandoned"))
            return
        except (WorkerDiedError, RetriableError) as e:
            kind = "worker_died" if isinstance(e, WorkerDiedError) else type(e).__name__
            if item.attempts < self.config.max_attempts:
                await self._retry(item, failure(kind, str(e), recovery="retried"))
                return
            await self._finish(item, failure(kind, str(e)))
            return
        except (RemoteError, InvalidInputError) as e:
            await self._finish(item, failure(type(e).__name__, str(e)))
            return
        try:
            work = CcdWorkResult.parse(result)
        except ContractError as e:
            await self._finish(item, failure("bad_worker_result", str(e)))
            return
        for stage, tai in work.stages.items():
            self._stage(item.visit, item.detector, stage, tai)
        if not work.ok or work.ccd is None:
            await self._finish(item, failure("bad_input", work.reason, metrics=result))
            return
        if not await self._still_held(item):
            return
        await self._finish(item, await self._associate(item, work.ccd, result))

    async def _associate(
        self, item: WorkItem, ccd: dict[str, Any], result: dict[str, Any]
    ) -> Outcome:
        wire = dict(ccd)
        wire["stages"] = await self._stages_of(item.visit, item.detector)
        wire["attempt"] = item.attempts
        cfg = self.config
        peer = self.peers(
            association_peer(
                cfg.association, cfg.association_partitions, ccd, cfg.association_tile_order
            )
        )
        deadline = asyncio.get_running_loop().time() + self.config.association_wait
        while True:
            try:
                reply = AssociateReply.parse(await peer.call("associate", wire))
                break
            except InvalidInputError as e:
                return failure("bad_input", f"association rejected the CCD: {e}", metrics=result)
            except RetriableError as e:
                if asyncio.get_running_loop().time() > deadline:
                    return failure(
                        "association_unavailable", f"{e}", metrics=result, recovery="left for batch"
                    )
                await asyncio.sleep(self.config.retry_backoff)
            except DmcsError as e:
                return failure(type(e).__name__, f"association failed: {e}", metrics=result)
        for stage, tai in reply.stages.items():  # Association announced its own
            self._stage(item.visit, item.detector, stage, tai, announce=False)
        return success(result, reply.nDiaSources, duplicate=not reply.stored)

    async def _inputs(self, info: dict[str, Any], detector: int) -> ResolvedInputs:
        """The worker's inputs but the raw: the paths (and checksums) the registry holds for
        the CCD's calibrations, template and reference catalogue."""
        if self._repository is None:
            raise NotReadyError(f"{self.name} has no registry connection")
        return await resolve_inputs(self._repository, info, detector)

    async def _raw_path(self, visit: int, detector: int) -> RawRecord:
        if self._repository is None:
            raise NotReadyError(f"{self.name} has no registry connection")
        raw = await self._repository.get_raw(visit, detector)
        if raw is None:
            raise InvalidInputError(f"visit {visit} detector {detector} is not in the registry")
        return raw

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(max(self.heartbeat_interval, 1.0))
            if self.summary_state == State.ENABLED:  # outside it, telemetry would not leave
                counts = await self._q(self.queue.counts)
                self.publish("processingStatus", {**self.counts, **counts}, "telemetry")
