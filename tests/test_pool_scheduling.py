"""The processor pool schedules by availability: claims in PostgreSQL decide who does a CCD.

A slow CCD holds up only itself: the other processor takes the slow one's backlog (with fixed
assignment it waits behind the slow CCD). A processor killed while holding a claim leaves the
CCD to another once the lease runs out, as a further attempt. No CCD is processed twice.

Plain CcdProcessor classes (real worker processes) on a real PostgreSQL and the ``mini``
night; raws are registered as Ingest registers them. No Association runs: each CCD ends
failed for want of it, which is still its one ``ccdProcessed``. The schedulers' own tests (two
``PoolScheduler`` on real work lists and claims) show the rules without CCD processing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from base.ccd_inputs import NightDirectoryRepository
from base.prompt.ccd_processor import CcdProcessor
from base.prompt.pool_scheduler import PoolScheduler
from base.prompt.settings import CcdProcessorSettings
from base.prompt.work_queue import WorkQueue
from base.prompt_records.claims import ClaimStore
from base.registry.products import register_night
from base.registry.records import DetectorRecord, ExposureRecord, RawRecord
from base.registry.repository import Repository
from state.clock import tai_now
from state.durable_sqlite import SqliteThread
from state.errors import InvalidInputError
from state.events import Event
from summit.schedule import read_schedule
from tests.standard import until

#: Processor 0 preloads 0 and 2, processor 1 preloads 1 (pool of 2).
SLOW_DETECTORS = (0, 1, 2)
#: Seconds to wait for a worker process to do a CCD or two (minutes on a loaded machine).
WAIT_S = 240.0


async def _register(repo: Repository, night: Path, v: Any, detector: int) -> None:
    raw = NightDirectoryRepository(night).get_raw(v.visit_id, detector)
    assert raw is not None
    name = f"MC_O_{v.visit_id}"
    await repo.register_raw(
        RawRecord(v.visit_id, detector, "mini", name, str(raw), "0" * 64, "0" * 64,
                  raw.stat().st_size, 64, 64, 4, True),
        ExposureRecord(v.visit_id, name, "mini", 20260101, 1, v.band, v.exptime, v.mjd_start,
                       v.ra, v.dec, v.field_id),
        DetectorRecord("mini", detector, f"R00_S0{detector}", None, 64, 64),
    )  # fmt: skip


class Pool:
    """Two processors on one night; events go to each as the bus would deliver them."""

    def __init__(self, tmp: Path, dsn: str, night: Path, tag: str, **settings: Any) -> None:
        self.events: dict[str, list[Event]] = {}
        self.processors: list[CcdProcessor] = []
        self.killed: list[CcdProcessor] = []
        self.dsn, self.night, self.tag = dsn, night, tag
        per = settings.pop("per", {})
        for index in (0, 1):
            name = f"CcdProcessor{index}"
            self.events[name] = []
            config = {
                "dsn": dsn, "registry_schema": f"reg_{tag}",
                "records_schema": f"pr_{tag}", "association_wait": 0.3, "retry_backoff": 0.2,
                "index": index, "pool_size": 2, **settings, **per.get(index, {}),
            }  # fmt: skip
            self.processors.append(
                CcdProcessor(
                    name, sink=self.events[name].append, settings=config, data_dir=tmp / name
                )
            )

    async def enable(self, repo: Repository) -> None:
        """Register the night's detectors and inputs (as ``dmcs night register`` does), and
        bring the processors to ENABLED."""
        await register_night(repo, self.night)
        for p in self.processors:
            await p.start()
            await p.do_start()
            await p.do_enable()

    async def close(self) -> None:
        for p in self.processors:
            if p not in self.killed:
                await p.close()

    async def kill(self, index: int) -> None:
        """Gone mid-CCD: its claims are neither settled nor renewed."""
        self.killed.append(self.processors[index])
        await self.processors[index].close()

    async def send(self, event: Event, to: list[CcdProcessor] | None = None) -> None:
        for p in self.processors if to is None else to:
            await p.on_event(event)

    def processed(self) -> list[tuple[str, int, int, int]]:
        """(processor, visit, detector, attempt) of every ccdProcessed."""
        return [
            (name, e.data["visit"], e.data["detector"], e.data["attempt"])
            for name, events in self.events.items()
            for e in events
            if e.topic == "ccdProcessed"
        ]

    async def claims(self) -> dict[tuple[int, int], tuple[str, int, str]]:
        conn = await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch(
                f'SELECT visit, detector, owner, attempt, state FROM "pr_{self.tag}".ccd_claim'
            )
        finally:
            await conn.close()
        return {(r["visit"], r["detector"]): (r["owner"], r["attempt"], r["state"]) for r in rows}


@pytest.mark.timeout(WAIT_S + 180)
async def test_a_slow_ccd_holds_up_only_itself_when_scheduling_by_availability(
    tmp_path: Path, pg_dsn: str, mini_night: Path
) -> None:
    """Processor 0 is stuck on detector 0 (a 600 s stall); detector 2, also processor 0's,
    is ingested with it. With fixed assignment it would wait the 600 s; here processor 1
    takes it once it is idle, and nothing is processed twice."""
    tag = "pool_slow"
    v = read_schedule(mini_night / "schedule.sqlite")[0]
    pool = Pool(
        tmp_path, pg_dsn, mini_night, tag, claim_grace=0.3, ccd_timeout=900.0,
        per={0: {"stall_detectors": [0], "stall_seconds": 600.0}},
    )  # fmt: skip
    repo = await Repository.connect(pg_dsn, f"reg_{tag}")
    try:
        await pool.enable(repo)
        for d in SLOW_DETECTORS:  # no nextVisit: no preloads, to keep the test short
            await _register(repo, mini_night, v, d)
            data = {"visit": v.visit_id, "detector": d, "statusCode": 0}
            await pool.send(Event("Ingest", "imageIngested", d, tai_now(), data))
        await until(lambda: len(pool.processed()) == 2, timeout=WAIT_S)
        await asyncio.sleep(1.0)  # time for a second processing to show, were there one
        done = pool.processed()
        claims = await pool.claims()
    finally:
        await repo.close()
        await pool.close()
    assert sorted(done) == [
        ("CcdProcessor1", v.visit_id, 1, 1),
        ("CcdProcessor1", v.visit_id, 2, 1),
    ], "the idle processor took the slow one's backlog, each CCD once"
    assert claims == {
        (v.visit_id, 0): ("CcdProcessor0", 1, "running"),
        (v.visit_id, 1): ("CcdProcessor1", 1, "done"),
        (v.visit_id, 2): ("CcdProcessor1", 1, "done"),
    }


async def test_fixed_assignment_leaves_a_ccd_to_its_processor(
    tmp_path: Path, pg_dsn: str, mini_night: Path
) -> None:
    """``scheduling = "fixed"``: processor 1 never takes processor 0's CCD; nothing claimed."""
    tag = "pool_fixed"
    v = read_schedule(mini_night / "schedule.sqlite")[0]
    pool = Pool(
        tmp_path, pg_dsn, mini_night, tag, scheduling="fixed", claim_grace=0.0,
        per={0: {"stall_detectors": [0], "stall_seconds": 600.0}},
    )  # fmt: skip
    repo = await Repository.connect(pg_dsn, f"reg_{tag}")
    try:
        await pool.enable(repo)
        await _register(repo, mini_night, v, 0)
        data = {"visit": v.visit_id, "detector": 0, "statusCode": 0}
        await pool.send(Event("Ingest", "imageIngested", 0, tai_now(), data))
        await until(lambda: pool.processors[0].queue.counts().get("running"), timeout=WAIT_S)
        await asyncio.sleep(2.0)
        counts = [p.queue.counts() for p in pool.processors]
        claims = await pool.claims()
    finally:
        await repo.close()
        await pool.close()
    assert counts == [{"running": 1}, {}]
    assert claims == {}


@pytest.mark.timeout(WAIT_S + 180)
async def test_a_ccd_whose_processor_died_holding_its_claim_is_taken_over_after_the_lease(
    tmp_path: Path, pg_dsn: str, mini_night: Path
) -> None:
    """Processor 0 claims detector 0 and is killed mid-CCD; processor 1 (which would never
    take another's CCD by grace here) takes it once the 3 s lease lapsed, as attempt 2 (a lease long
    enough that a loaded machine's stalls do not lapse it while processor 0 lives)."""
    tag = "pool_takeover"
    v = read_schedule(mini_night / "schedule.sqlite")[0]
    pool = Pool(
        tmp_path, pg_dsn, mini_night, tag, claim_lease=3.0, claim_grace=600.0,
        per={0: {"stall_detectors": [0], "stall_seconds": 60.0}},
    )  # fmt: skip
    repo = await Repository.connect(pg_dsn, f"reg_{tag}")
    try:
        await pool.enable(repo)
        await _register(repo, mini_night, v, 0)
        data = {"visit": v.visit_id, "detector": 0, "statusCode": 0}
        await pool.send(Event("Ingest", "imageIngested", 0, tai_now(), data))
        held = await until(lambda: _claim_of(pool, v.visit_id, 0), timeout=WAIT_S)
        assert held == ("CcdProcessor0", 1, "running")
        await pool.kill(0)
        done = await until(pool.processed, timeout=WAIT_S)
        await asyncio.sleep(1.5)
        claims = await pool.claims()
        done = pool.processed()
    finally:
        await repo.close()
        await pool.close()
    assert done == [("CcdProcessor1", v.visit_id, 0, 2)]
    assert claims == {(v.visit_id, 0): ("CcdProcessor1", 2, "done")}
    logged = [e.data["message"] for e in pool.events["CcdProcessor1"] if e.topic == "logMessage"]
    assert any("claim expired" in m for m in logged), logged


async def _claim_of(pool: Pool, visit: int, detector: int) -> tuple[str, int, str] | None:
    return (await pool.claims()).get((visit, detector))


async def test_claims_admit_one_holder_and_refuse_bad_input(pg_dsn: str) -> None:
    pg = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    try:
        store = await ClaimStore.connect(pg, "pr_pool_claims")
        won = await asyncio.gather(*(store.claim(7, 1, f"P{i}", 30.0) for i in range(4)))
        assert sorted(won, key=str) == [1, None, None, None], "exactly one claimer wins"
        holder = (await store.get(7, 1)).owner
        assert await store.claim(7, 1, holder, 30.0) == 2, "its own retry is a new attempt"
        assert await store.taken([(7, 1), (7, 2)], "someone") == {(7, 1)}
        assert await store.taken([(7, 1)], holder) == set(), "its own claim is not another's"
        assert not await store.settle(7, 1, "not-the-holder")
        assert await store.settle(7, 1, holder)
        assert await store.claim(7, 1, "P9", 30.0) is None, "a settled CCD is never retaken"
        assert await store.claim(8, 1, "A", 0.05) == 1
        await asyncio.sleep(0.2)
        assert await store.expired() == [(8, 1)]
        assert await store.claim(8, 1, "B", 30.0) == 2, "an expired claim is taken over"
        assert not await store.holds(8, 1, "A", 30.0)
        assert await store.renew("B", 30.0, [(8, 1), (7, 1)]) == {(8, 1)}, "7/1 is settled"
        assert await store.renew("B", 30.0, []) == set()
        assert await store.orphaned("B", []) == [(8, 1)]
        assert await store.orphaned("B", [(8, 1)]) == []
        with pytest.raises(InvalidInputError):
            await store.claim(9, 1, "", 30.0)
        with pytest.raises(InvalidInputError):
            await store.claim(9, 1, "A", 0.0)
        assert await store.get(9, 1) is None, "a refused claim leaves nothing behind"
    finally:
        await pg.close()


def _schedulers(
    tmp: Path, store: ClaimStore, **settings: Any
) -> tuple[list[PoolScheduler], list[list[tuple[int, int]]]]:
    """Processors 0 and 1 of a pool of 2 as their schedulers see it: real work lists and
    claims, no CCD processing (what a processor does with the CCD it is given)."""
    schedulers, passed = [], []
    thread = SqliteThread("test-work-lists")
    for index in (0, 1):
        config = CcdProcessorSettings(index=index, pool_size=2, **settings)
        seen: list[tuple[int, int]] = []
        s = PoolScheduler(
            f"P{index}",
            WorkQueue(tmp / f"work{index}.sqlite"),
            thread.run,
            lambda c=config: c,
            lambda v, d, seen=seen: seen.append((v, d)),
        )
        s.claims = store
        schedulers.append(s)
        passed.append(seen)
    return schedulers, passed


async def test_an_idle_processor_takes_its_own_ccds_at_once_and_others_after_the_grace(
    tmp_path: Path, pg_dsn: str
) -> None:
    pg = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    try:
        store = await ClaimStore.connect(pg, "pr_pool_sched")
        grace = 5.0  # longer than a loaded machine's stall between two calls
        (a, b), passed = _schedulers(tmp_path, store, claim_grace=grace)
        for s in (a, b):
            for d in (0, 1, 2):
                s.queue.enqueue(5, d)
        item, _ = await a.next()
        assert (item.visit, item.detector, item.attempts) == (5, 0, 1)
        item, _ = await b.next()
        assert (item.detector, item.attempts) == (1, 1), "its own CCD, no grace"
        item, wait = await b.next()
        assert item is None and 0 < wait <= grace, "another's CCD waits out the grace"
        await asyncio.sleep(wait + 0.05)
        item, _ = await b.next()  # a is busy with detector 0: b takes a's detector 2
        assert (item.detector, item.attempts) == (2, 1)
        assert passed[1] == [(5, 0)], "detector 0 is a's: passed over"
        assert await a.next() == (None, None), "1 is b's and 2 was taken: nothing left"
        assert sorted(passed[0]) == [(5, 1), (5, 2)]
        assert a.queue.counts() == {"running": 1, "elsewhere": 2}
        await b.settle(item)
        assert (await store.get(5, 2)).state == "done"
    finally:
        await pg.close()


async def test_a_freed_processor_takes_its_own_ccd_of_a_visit_before_anothers_ripe_one(
    tmp_path: Path, pg_dsn: str
) -> None:
    """Each CCD another processor takes is preloaded twice; in detector order two busy
    processors took each other's next CCD whenever both had one waiting."""
    pg = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    try:
        store = await ClaimStore.connect(pg, "pr_pool_own_first")
        (a, b), passed = _schedulers(tmp_path, store, claim_grace=0.0)
        for s in (a, b):
            for d in range(4):
                s.queue.enqueue(5, d)
            s.queue.enqueue(6, 0)
        first_a, _ = await a.next()
        first_b, _ = await b.next()
        assert (first_a.detector, first_b.detector) == (0, 1)
        item, _ = await b.next()
        assert (item.visit, item.detector) == (5, 3), "its own 3 before a's ripe 2"
        item, _ = await a.next()
        assert (item.visit, item.detector) == (5, 2)
        item, _ = await b.next()
        assert (item.visit, item.detector) == (6, 0), "nothing of its own left: a's, in order"
        assert passed == [[], [(5, 0), (5, 2)]], "b passed over what a had taken"
    finally:
        await pg.close()


async def test_the_claims_of_a_processor_that_stopped_renewing_are_taken_over(
    tmp_path: Path, pg_dsn: str
) -> None:
    pg = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    try:
        store = await ClaimStore.connect(pg, "pr_pool_takeover")
        (a, b), _ = _schedulers(tmp_path, store, claim_grace=600.0, claim_lease=0.3)
        a.queue.enqueue(6, 0)
        b.queue.enqueue(6, 0)
        held, _ = await a.next()
        assert held.attempts == 1
        left, wait = await b.next()
        assert left is None and wait > 500, "b leaves a's CCD to a"
        await asyncio.sleep(0.4)  # a is gone: it neither renews nor settles
        assert await b.maintain() == 1
        item, _ = await b.next()
        assert (item.visit, item.detector, item.attempts) == (6, 0, 2), "at once, attempt 2"
        assert not await a.holds(held), "a, were it alive, learns it lost the CCD"
        assert await b.holds(item)
    finally:
        await pg.close()


async def test_a_restarted_processor_takes_up_its_dead_incarnations_claims_at_once(
    tmp_path: Path, pg_dsn: str
) -> None:
    """Claims are renewed by what this incarnation works on, not by its name: a processor
    restarted under the same name (its work list reopened) neither keeps its dead
    incarnation's claims alive unworked, nor waits out their lease: it queues them again at
    once, and settles the one its work list finished but whose settle never reached the
    database."""
    pg = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    try:
        store = await ClaimStore.connect(pg, "pr_pool_restart")
        (a, b), _ = _schedulers(tmp_path, store, claim_grace=600.0, claim_lease=60.0)
        for d in (0, 2):
            a.queue.enqueue(9, d)
        b.queue.enqueue(9, 0)
        first, _ = await a.next()
        second, _ = await a.next()
        assert {first.detector, second.detector} == {0, 2}
        a.queue.finish(second, "failed", "bad input")  # ... and died before settling it
        assert await b.next() == (None, pytest.approx(600.0, abs=5.0)), "a holds it: b waits"
        a.queue.reopen()
        a.queue.recover()  # the restart: the running CCD is queued again
        (tmp_path / "fresh").mkdir()
        (restarted, _), _ = _schedulers(tmp_path / "fresh", store)
        restarted.queue, restarted.owner = a.queue, a.owner
        assert restarted.held == set()
        assert await restarted.maintain() == 1, "its own orphan queued again at once"
        assert (await store.get(9, second.detector)).state == "done", "the finished one settled"
        item, _ = await restarted.next()
        assert (item.visit, item.detector, item.attempts) == (9, first.detector, 2)
        assert restarted.held == {(9, first.detector)}
        assert await restarted.maintain() == 0
        await restarted.settle(item)
        assert restarted.held == set()
        assert (await store.get(9, first.detector)).state == "done"
    finally:
        await pg.close()


async def test_fixed_assignment_takes_only_its_own_detectors_and_claims_nothing(
    tmp_path: Path, pg_dsn: str
) -> None:
    pg = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    try:
        store = await ClaimStore.connect(pg, "pr_pool_fixed_sched")
        (a, _b), _ = _schedulers(tmp_path, store, scheduling="fixed", claim_grace=0.0)
        assert not a.serves(1) and a.serves(2)
        a.queue.enqueue(7, 2)
        item, wait = await a.next()
        assert (item.detector, item.attempts, wait) == (2, 1, None)
        assert await a.holds(item) and await a.maintain() == 0
        assert await store.get(7, 2) is None
    finally:
        await pg.close()
