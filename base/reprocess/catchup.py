"""Daytime catch-up: the CCDs prompt processing recorded as failed, abandoned or deferred (the
overload policy's, when the pool fell behind), into the prompt products, so the night ends
complete.

The CCDs run through the same executor as a release (release 0: prompt ids), then, in time
order, through the prompt association step into the prompt APDB and the prompt alert path
(``build_alerts`` → ``serialize`` → the alert archive), with ``observation_reason`` marking
the alerts late. Their prompt outcome is then recorded as processed (``recovery =
"catch-up"``), so a second catch-up finds nothing to do. The APDB store and the archive are
both claimed per (visit, detector): a CCD already stored gets no second set of rows or
alerts. The alerts reach the archive (what brokers fetch from); the live stream of a running
AlertPublisher is not fed.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from base.alerts import AlertArchive, build_alerts, serialize
from base.alerts.archive import night_file
from base.alerts.schema import AlertSchema, latest_schema
from base.apdb import Apdb
from base.db import connect_pool, mapped_errors, recorded
from base.prompt.association_step import AlertSet, alert_set
from base.prompt.requests import CcdResults
from base.prompt_records import CcdOutcome, NightRecords, PromptRecords
from base.prompt_records.store import STORE as RECORDS_STORE
from base.registry.products import night_camera
from base.reliability import alert_threshold, load_reliability_model
from base.reprocess.associate import Associated, associate_ccd
from base.reprocess.executor import Executor
from base.reprocess.ledger import Ledger
from base.reprocess.observer import RunObserver
from base.reprocess.plan import AssociationParams, config_hash, inputs_digest
from base.reprocess.runner import give_up, registered_units, run_locked, run_units
from base.reprocess.work import CcdUnit, columns_checksum
from state.clock import tai_now
from state.errors import DmcsError, InvalidInputError

#: ``observation_reason`` of an alert published by the catch-up (the alert schema's field).
LATE = "late:catch-up"
#: Outcomes the catch-up processes: the failed and abandoned CCDs, and those the overload
#: policy deferred to it (base.prompt.overload).
MISSED = ("failed", "abandoned", "deferred")


@dataclass(frozen=True)
class CatchUpConfig:
    dsn: str
    day_obs: int
    archive_dir: Path
    #: A simulated night whose products are registered first (None: they already are).
    night_dir: Path | None = None
    registry_schema: str = "registry"
    apdb_schema: str = "apdb"
    records_schema: str = "prompt"
    archive_schema: str = "alerts"
    max_attempts: int = 3
    association: AssociationParams = field(default_factory=AssociationParams)

    @property
    def name(self) -> str:
        return f"catchup_{self.day_obs}"


@dataclass
class CatchUpSummary:
    day_obs: int
    missed: int = 0
    #: Of ``missed``, those the overload policy deferred (the rest failed or were abandoned).
    deferred: int = 0
    recovered: int = 0
    already_stored: int = 0
    alerts: int = 0
    failed: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def catch_up(
    config: CatchUpConfig, executor: Executor, observer: RunObserver | None = None
) -> CatchUpSummary:
    summary = CatchUpSummary(config.day_obs)
    seen = observer or RunObserver()

    async def work(pool: asyncpg.Pool, ledger: Ledger) -> bool:
        await _catch_up(config, executor, pool, ledger, summary, seen)
        return bool(summary.failed)

    await run_locked(config.dsn, config.name, work, seen, "catchUp", executor.workers)
    return summary


async def check_catch_up(config: CatchUpConfig) -> None:
    """Refuse a catch-up that names no night, before any worker starts: ``night_dir`` without
    a simulated night, a night the prompt records do not hold, or an archive without the
    alerts prompt processing archived that night (InvalidInputError, naming what is missing).
    """
    if config.night_dir is not None:
        await asyncio.to_thread(night_camera, config.night_dir)
    pool = await connect_pool(config.dsn, min_size=1, max_size=1, what="catch-up check")
    try:
        async with mapped_errors("catch-up check"), pool.acquire() as conn:
            found = await recorded(conn, config.records_schema, RECORDS_STORE.component)
        if not found:  # a mistyped schema is not created by the check
            raise InvalidInputError(
                f"no prompt records in schema {config.records_schema!r}: nothing to catch up"
                " (wrong --dsn or --records-schema?)"
            )
        records = await PromptRecords.connect(pool, config.records_schema)
        _check_night(config, await records.fetch_night(config.day_obs))
    finally:
        await pool.close()


def _check_night(config: CatchUpConfig, night: NightRecords) -> None:
    if not night.visits:
        raise InvalidInputError(
            f"no visit of night {config.day_obs} in the prompt records (schema"
            f" {config.records_schema!r}): nothing to catch up (wrong --night, --dsn or"
            " --records-schema?)"
        )
    archived = sum(o.n_alerts for o in night.outcomes)
    path = night_file(config.archive_dir, config.day_obs)
    if archived and not path.is_file():
        raise InvalidInputError(
            f"the alert archive {config.archive_dir} has no {path.name}, though prompt"
            f" processing archived {archived} alerts of night {config.day_obs} (not the"
            " AlertPublisher's archive?)"
        )


async def _catch_up(
    config: CatchUpConfig,
    executor: Executor,
    pool: asyncpg.Pool,
    ledger: Ledger,
    summary: CatchUpSummary,
    observer: RunObserver,
) -> None:
    records = await PromptRecords.connect(pool, config.records_schema)
    night = await records.fetch_night(config.day_obs)
    _check_night(config, night)
    missed = {(o.visit, o.detector): o for o in night.outcomes if o.status in MISSED}
    summary.missed = len(missed)
    summary.deferred = sum(o.status == "deferred" for o in missed.values())
    every = await registered_units(
        config.dsn, config.registry_schema, config.night_dir, config.day_obs, None
    )
    units = [u for u in every if (u.visit, u.detector) in missed]
    for key in sorted(set(missed) - {(u.visit, u.detector) for u in units}):
        summary.failed[f"ccd:{key[0]}/{key[1]}"] = "no raw in the registry"
        observer.failure(f"ccd:{key[0]}/{key[1]}", "no raw in the registry", 0, True)
    chash = config_hash(0, config.association, {"mode": "catch-up", "inputs": inputs_digest(units)})
    await ledger.begin_release(
        config.name, 0, config.apdb_schema, chash, {"dayObs": config.day_obs}
    )
    todo = set(await ledger.todo(config.name, [(u.key, "ccd") for u in units], chash, False))
    results: dict[str, dict[str, Any]] = {}

    async def keep(unit: CcdUnit, ccd: dict[str, Any]) -> None:
        results[unit.key] = ccd

    pending = [u for u in units if u.key in todo]
    failed = await run_units(
        pending,
        executor,
        0,
        config.max_attempts,
        ledger,
        config.name,
        keep,
        observer,
    )
    summary.failed.update(failed)
    model = await asyncio.to_thread(load_reliability_model)
    threshold = alert_threshold(model, None)
    apdb = await Apdb.connect(config.dsn, config.apdb_schema)
    schema = await asyncio.to_thread(latest_schema)
    archive = await AlertArchive.open(config.dsn, config.archive_dir, config.archive_schema, schema)
    try:
        for unit in pending:
            if unit.key not in results:
                continue
            ccd = CcdResults.from_wire(results[unit.key])
            try:
                done = await associate_ccd(apdb, ccd, config.association, model, threshold)
                alerted = alert_set(done.result, ccd, threshold)
                n_alerts = await _alerts(archive, schema, ccd, done, alerted) if done.stored else 0
            except DmcsError as e:
                await give_up(ledger, config.name, unit.key, e, observer, summary.failed)
                continue
            summary.recovered += done.stored
            summary.already_stored += not done.stored
            summary.alerts += n_alerts
            before = missed[(unit.visit, unit.detector)]
            await records.record_outcome(
                CcdOutcome(
                    visit=unit.visit,
                    detector=unit.detector,
                    attempt=before.attempt + 1,
                    status="processed",
                    reason="daytime catch-up",
                    recovery="catch-up",
                    n_dia_sources=len(ccd.sources["diaSourceId"]),
                )
            )
            if done.stored:
                await records.record_alerts(unit.visit, unit.detector, n_alerts, tai_now())
            await ledger.done(
                config.name,
                unit.key,
                columns_checksum(ccd.sources),
                len(ccd.sources["diaSourceId"]),
            )
    finally:
        await archive.close()
        await apdb.close()


async def _alerts(
    archive: AlertArchive, schema: AlertSchema, ccd: CcdResults, a: Associated, alerted: AlertSet
) -> int:
    """The prompt alert path for one stored CCD, its alerts marked late; returns how many."""

    def packets() -> list[bytes]:
        alerts = build_alerts(
            alerted.sources,
            objects=a.result.objects,
            history=a.preload.sources,
            forced_history=a.preload.forced_sources,
            ss_sources=alerted.ss_sources,
            cutouts=alerted.cutouts or None,
            observation_reason=LATE,
            schema=schema,
        )
        return serialize(alerts, schema)

    framed = await asyncio.to_thread(packets)
    ids = np.asarray(alerted.sources["diaSourceId"], dtype=np.int64).tolist()
    fresh = await archive.archive(ccd.day_obs, ccd.visit, ccd.detector, ids, framed)
    return len(framed) if fresh else 0
