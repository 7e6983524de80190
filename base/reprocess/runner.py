"""A data-release reprocessing: CCDs in parallel, then association per sky region in time order.

Raws, calibrations, templates and the reference catalogue all come from the registry
(``night_dir``, when given, is first registered there: ``base.registry.products``), so a
product re-registered elsewhere is the one read, and one the registry lacks, or whose file
is missing or changed, fails its CCDs with that reason.

Phase 1 runs every CCD unit not yet done (ledger) through the executor, ``workers`` at a
time, and keeps its results in the release schema (``staging``). Phase 2 groups the CCDs
by HEALPix tile (``algorithms.partition.region_of``, the prompt Association's partitions too)
and, region after region in tile order, associates them in time order into the release's
APDB (schema ``dr_<name>``). Every store is keyed by (visit, detector), so a region resumed
after a kill skips what it had stored and the result equals an uninterrupted run. Bad data
fails a CCD at once; a dead worker or a retriable error is retried up to
``max_attempts``; both end in the ledger with their reason.
Phase 3 (``base.reprocess.characterize``) computes every DiaObject's variability features
from its full history, redone whenever a region's checksum changed.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from algorithms.partition import region_of
from base.apdb import Apdb
from base.apdb.schema import q
from base.db import connect_pool, mapped_errors
from base.registry.products import register_night
from base.registry.repository import Repository
from base.reliability import alert_threshold, load_reliability_model
from base.reprocess.associate import associate_ccd, dia_source_checksum
from base.reprocess.characterize import characterize_release, variability_checksum
from base.reprocess.executor import Executor
from base.reprocess.ledger import Ledger
from base.reprocess.observer import RunObserver
from base.reprocess.plan import (
    AssociationParams,
    ccd_units,
    config_hash,
    inputs_digest,
)
from base.reprocess.staging import Staging
from base.reprocess.work import CcdUnit, pack
from state.errors import DmcsError, InvalidInputError, RetriableError

#: Seconds before the first retry of a CCD whose worker was lost (doubling after).
RETRY_BACKOFF = 0.5


@dataclass(frozen=True)
class ReprocessConfig:
    dsn: str
    release: str
    release_id: int
    first_night: int
    last_night: int | None = None
    #: A simulated night whose products are registered before the run (None: already are).
    night_dir: Path | None = None
    registry_schema: str = "registry"
    max_attempts: int = 3
    clobber: bool = False
    association: AssociationParams = field(default_factory=AssociationParams)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,40}", self.release):
            raise InvalidInputError(f"release name {self.release!r}: use [a-z][a-z0-9_]*")
        if not 0 < self.release_id < 32:
            raise InvalidInputError(f"release id {self.release_id}: 1..31 (0 is prompt)")
        if self.max_attempts < 1:
            raise InvalidInputError("max_attempts must be >= 1")

    @property
    def schema(self) -> str:
        return f"dr_{self.release}"


@dataclass
class RunSummary:
    release: str
    schema: str
    ccds: int = 0
    processed: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    regions: int = 0
    regions_run: int = 0
    dia_sources: int = 0
    characterized: int = 0
    checksum: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def run_units(
    units: list[CcdUnit],
    executor: Executor,
    release_id: int,
    max_attempts: int,
    ledger: Ledger,
    ledger_name: str,
    on_result: Callable[[CcdUnit, dict[str, Any]], Any],
    observer: RunObserver,
) -> dict[str, str]:
    """Process ``units`` through ``executor``, ``workers`` at a time; returns failures.

    ``on_result(unit, ccd)`` keeps a CCD's results and returns ``(checksum, rows)`` to mark
    the unit done, or None when the caller marks it done later.
    """
    failed: dict[str, str] = {}
    gate = asyncio.Semaphore(max(executor.workers, 1))
    done = 0

    async def one(unit: CcdUnit) -> None:
        nonlocal done
        async with gate:
            while True:
                attempt = await ledger.start(ledger_name, unit.key)
                try:
                    result = await executor.run(unit, release_id)
                except RetriableError as e:
                    final = attempt >= max_attempts
                    reason = f"{type(e).__name__}: {e}"
                    await ledger.failed(ledger_name, unit.key, reason, final=final)
                    observer.failure(unit.key, reason, attempt, final)
                    if not final:
                        await asyncio.sleep(RETRY_BACKOFF * 2 ** (attempt - 1))
                        continue
                    failed[unit.key] = str(e)
                    break
                if not result["ok"]:
                    await ledger.failed(ledger_name, unit.key, result["reason"], final=True)
                    observer.failure(unit.key, result["reason"], attempt, True)
                    failed[unit.key] = result["reason"]
                    break
                kept = await on_result(unit, result["ccd"])
                if kept is not None:
                    await ledger.done(ledger_name, unit.key, *kept)
                break
        done += 1
        observer.progress("ccd", done, len(units))

    observer.progress("ccd", 0, len(units))
    async with asyncio.TaskGroup() as tg:
        for unit in units:
            tg.create_task(one(unit))
    return failed


async def registered_units(
    dsn: str, schema: str, night_dir: Path | None, first: int, last: int | None
) -> list[CcdUnit]:
    """The CCD units of nights ``first..last`` with their inputs, all from the registry;
    ``night_dir``'s products are registered first (idempotently)."""
    repo = await Repository.connect(dsn, schema)
    try:
        if night_dir is not None:
            await register_night(repo, night_dir)
        return await ccd_units(repo, first, last)
    finally:
        await repo.close()


async def give_up(
    ledger: Ledger,
    run: str,
    unit: str,
    error: DmcsError,
    observer: RunObserver,
    failed: dict[str, str],
) -> None:
    """Record ``unit`` as failed for good: in the ledger, to the observer and in ``failed``."""
    reason = f"{type(error).__name__}: {error}"
    await ledger.failed(run, unit, reason, final=True)
    observer.failure(unit, reason, 1, True)
    failed[unit] = str(error)


async def reprocess(
    config: ReprocessConfig, executor: Executor, observer: RunObserver | None = None
) -> RunSummary:
    """Run (or resume) the release; see the module docstring."""
    summary = RunSummary(config.release, config.schema)
    seen = observer or RunObserver()

    async def work(pool: asyncpg.Pool, ledger: Ledger) -> bool:
        await _run(config, executor, pool, ledger, summary, seen)
        return bool(summary.failed)

    await run_locked(config.dsn, config.release, work, seen, "release", executor.workers)
    return summary


async def run_locked(
    dsn: str,
    name: str,
    work: Callable[[asyncpg.Pool, Ledger], Awaitable[bool]],
    observer: RunObserver,
    mode: str,
    workers: int,
) -> None:
    """Run ``work`` holding the ledger's lock on ``name``; report and record how it ended.

    ``work`` returns True when some unit failed. The run ends ``done``, ``failed`` or, if
    ``work`` raised or was cancelled, ``interrupted`` (a later run resumes it). ``observer``
    hears that the run began (``mode``, ``workers``) and how it ended.
    """
    observer.began(name, mode, workers)
    status = "interrupted"
    try:
        pool = await connect_pool(dsn, min_size=1, max_size=8, what=name)
        try:
            ledger = await Ledger.connect(pool)
            await ledger.lock(name)
            try:
                status = "failed" if await work(pool, ledger) else "done"
            finally:
                await asyncio.shield(_finish(ledger, name, status))
        finally:
            await pool.close()
    finally:
        observer.ended(status)


async def _finish(ledger: Ledger, release: str, status: str) -> None:
    await ledger.end_release(release, status)
    await ledger.unlock(release)


async def _run(
    config: ReprocessConfig,
    executor: Executor,
    pool: asyncpg.Pool,
    ledger: Ledger,
    summary: RunSummary,
    observer: RunObserver,
) -> None:
    units = await registered_units(
        config.dsn, config.registry_schema, config.night_dir, config.first_night, config.last_night
    )
    if not units:
        nights = (
            f"night {config.first_night}"
            if config.last_night in (None, config.first_night)
            else f"nights {config.first_night}..{config.last_night}"
        )
        raise InvalidInputError(f"no raws of {nights} in the registry")
    chash = config_hash(config.release_id, config.association, {"inputs": inputs_digest(units)})
    if config.clobber:
        async with mapped_errors("reprocess clobber"), pool.acquire() as conn:
            await conn.execute(f"DROP SCHEMA IF EXISTS {q(config.schema)} CASCADE")
    params: dict[str, Any] = {"nights": [config.first_night, config.last_night]}
    if config.night_dir is not None:
        params["nightDir"] = str(config.night_dir)
    await ledger.begin_release(config.release, config.release_id, config.schema, chash, params)
    if config.clobber:
        await ledger.reset(config.release)
    apdb = await Apdb.connect(config.dsn, config.schema)
    try:
        staging = await Staging.connect(pool, config.schema)
        todo = set(
            await ledger.todo(
                config.release, [(u.key, "ccd") for u in units], chash, config.clobber
            )
        )
        summary.ccds = len(units)
        summary.skipped = len(units) - len(todo)

        async def keep(unit: CcdUnit, ccd: dict[str, Any]) -> tuple[str, int]:
            data, checksum = pack(ccd)
            region = region_of(ccd["footprint_ra"], ccd["footprint_dec"])
            n = len(ccd["sources"]["diaSourceId"])
            mjd = float(ccd["midpoint_mjd"])
            await staging.put(unit.visit, unit.detector, mjd, region, checksum, n, data)
            return checksum, n

        pending = [u for u in units if u.key in todo]
        summary.failed = await run_units(
            pending,
            executor,
            config.release_id,
            config.max_attempts,
            ledger,
            config.release,
            keep,
            observer,
        )
        summary.processed = len(pending) - len(summary.failed)
        done_keys = [(u.visit, u.detector) for u in units if u.key not in summary.failed]
        await _associate_regions(
            config, chash, pool, ledger, apdb, staging, done_keys, summary, observer
        )
        await _characterize(config, chash, pool, ledger, summary, observer)
    finally:
        await apdb.close()


async def _associate_regions(
    config: ReprocessConfig,
    chash: str,
    pool: asyncpg.Pool,
    ledger: Ledger,
    apdb: Apdb,
    staging: Staging,
    keys: list[tuple[int, int]],
    summary: RunSummary,
    observer: RunObserver,
) -> None:
    model = await asyncio.to_thread(load_reliability_model)
    threshold = alert_threshold(model, None)
    regions = await staging.regions(keys)
    summary.regions = len(regions)
    checksums = []
    observer.progress("region", 0, len(regions))
    for i, (region, members) in enumerate(sorted(regions.items())):
        unit = f"region:{region}"
        # The region is redone when its members change (a failed CCD that later succeeded).
        rhash = hashlib.sha256(f"{chash}:{sorted(members)}".encode()).hexdigest()[:16]
        if await ledger.todo(config.release, [(unit, "region")], rhash, config.clobber):
            await ledger.start(config.release, unit)
            try:
                for visit, detector in members:
                    if await apdb.is_stored(visit, detector):
                        continue
                    ccd = await staging.get(visit, detector)
                    await associate_ccd(apdb, ccd, config.association, model, threshold)
            except DmcsError as e:
                await give_up(ledger, config.release, unit, e, observer, summary.failed)
                continue
            checksum, n = await dia_source_checksum(apdb, members, pool)
            await ledger.done(config.release, unit, checksum, n)
            summary.regions_run += 1
        else:
            checksum, n = await dia_source_checksum(apdb, members, pool)
        checksums.append(checksum)
        summary.dia_sources += n
        observer.progress("region", i + 1, len(regions))
    summary.checksum = hashlib.sha256("".join(checksums).encode()).hexdigest()


async def _characterize(
    config: ReprocessConfig,
    chash: str,
    pool: asyncpg.Pool,
    ledger: Ledger,
    summary: RunSummary,
    observer: RunObserver,
) -> None:
    """Phase 3: variability from the full history (``characterize``), redone when a region
    changed; its checksum is folded into the run's."""
    unit = "characterize"
    # summary.checksum is, at this point, the hash of every region's checksum.
    vhash = hashlib.sha256(f"{chash}:{summary.checksum}".encode()).hexdigest()[:16]
    if await ledger.todo(config.release, [(unit, "characterize")], vhash, config.clobber):
        await ledger.start(config.release, unit)
        try:
            checksum, n = await characterize_release(
                pool, config.schema, progress=lambda d, t: observer.progress(unit, d, t)
            )
        except DmcsError as e:
            await give_up(ledger, config.release, unit, e, observer, summary.failed)
            return
        await ledger.done(config.release, unit, checksum, n)
    else:
        checksum, n = await variability_checksum(pool, config.schema)
        observer.progress(unit, n, n)
    summary.characterized = n
    summary.checksum = hashlib.sha256(f"{summary.checksum}{checksum}".encode()).hexdigest()
