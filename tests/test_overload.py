"""Falling behind gracefully: the overload policy's order and deferral, on real work lists
and real claims (PostgreSQL), its configuration, its alarm and its counts in the report.

A starved pool is made by listing CCDs as ingested long ago (their ``ingested`` time moved
back in the work list's file): what a processor that could not keep up would find.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from base.prompt.ccd_processor import CcdProcessor
from base.prompt.overload import plan
from base.prompt.pool_scheduler import PoolScheduler
from base.prompt.settings import CcdProcessorSettings
from base.prompt.work_queue import WorkItem, WorkQueue
from base.prompt_records import CcdOutcome, PromptRecords
from base.prompt_records.claims import ClaimStore
from base.reports.performance import performance_report
from commands.dashboard.alarms import Severity
from commands.dashboard.rules import Rules
from config.system import DEFAULT_SYSTEM_FILE, OverloadConfig, load_system_config
from state.clock import tai_now
from state.durable_sqlite import SqliteThread
from state.errors import ConfigurationError, InvalidInputError
from state.events import Event
from tests.standard import until

NEWEST = OverloadConfig(policy="newest_first", latency_budget=60.0)
FIFO = OverloadConfig(policy="fifo", latency_budget=60.0)


def _items(*keys: tuple[int, int]) -> list[WorkItem]:
    return [WorkItem(v, d, "queued", 0, "") for v, d in keys]


def test_within_the_budget_both_policies_keep_arrival_order() -> None:
    now = 1000.0
    pending = [(i, now - 5.0) for i in _items((1, 0), (1, 1), (2, 0))]
    for policy in (NEWEST, FIFO):
        chosen = plan(pending, now, policy)
        assert [(i.visit, i.detector) for i in chosen.order] == [(1, 0), (1, 1), (2, 0)]
        assert chosen.defer == [] and not chosen.behind


def test_behind_newest_first_defers_what_is_past_the_budget_and_takes_the_newest_visit() -> None:
    now = 1000.0
    ages = {(1, 0): 90.0, (1, 1): 90.0, (2, 0): 40.0, (2, 1): 40.0, (3, 0): 2.0}
    pending = [(i, now - ages[(i.visit, i.detector)]) for i in _items(*ages)]
    chosen = plan(pending, now, NEWEST)
    assert chosen.behind and chosen.backlog_s == pytest.approx(90.0)
    assert [(i.visit, i.detector) for i in chosen.order] == [(3, 0), (2, 0), (2, 1)]
    assert [(i.visit, i.detector) for i, _ in chosen.defer] == [(1, 0), (1, 1)]
    assert all("over the 60 s latency budget" in why for _, why in chosen.defer)
    fifo = plan(pending, now, FIFO)
    assert fifo.defer == [] and [i.visit for i in fifo.order] == [1, 1, 2, 2, 3], "fifo: all"


def test_a_projected_backlog_over_the_budget_puts_the_newest_first_without_deferring() -> None:
    now = 1000.0
    pending = [(i, now - 10.0) for i in _items((1, 0), (2, 0), (3, 0))]
    chosen = plan(pending, now, NEWEST, ccd_seconds=30.0, pool_size=1)
    assert chosen.behind and chosen.backlog_s == pytest.approx(100.0)
    assert [i.visit for i in chosen.order] == [3, 2, 1] and chosen.defer == []
    assert not plan(pending, now, NEWEST, ccd_seconds=30.0, pool_size=4).behind


def _age(queue: WorkQueue, visit: int, seconds: float) -> None:
    """List ``visit``'s CCDs as ingested ``seconds`` ago (a processor that fell behind)."""
    with sqlite3.connect(queue.path) as db:
        db.execute("UPDATE work SET ingested = ? WHERE visit = ?", (time.time() - seconds, visit))


def _scheduler(
    tmp: Path, index: int, store: ClaimStore | None, thread: SqliteThread, **settings: Any
) -> PoolScheduler:
    config = CcdProcessorSettings(index=index, **settings)
    s = PoolScheduler(
        f"P{index}",
        WorkQueue(tmp / f"work{index}.sqlite"),
        thread.run,
        lambda: config,
        lambda v, d: None,
    )
    s.claims = store
    return s


async def test_a_starved_fixed_processor_defers_the_old_visits_and_takes_the_newest(
    tmp_path: Path,
) -> None:
    thread = SqliteThread("test-overload")
    s = _scheduler(tmp_path, 0, None, thread, scheduling="fixed", overload=NEWEST)
    for visit in (1, 2, 3):
        for d in (0, 1):
            s.queue.enqueue(visit, d)
    _age(s.queue, 1, 120.0)
    s.ccd_seconds = 30.0  # four CCDs left at 30 s each: still behind once visit 1 is deferred
    item, _ = await s.next()
    assert (item.visit, item.detector, item.state) == (3, 0, "running")
    deferred = s.take_deferred()
    assert [(i.visit, i.detector, i.state) for i, _ in deferred] == [
        (1, 0, "running"),
        (1, 1, "running"),
    ], "started, for the processor to end as deferred"
    assert s.behind and s.take_deferred() == [], "each deferred CCD is handed out once"
    item, _ = await s.next()
    assert (item.visit, item.detector) == (3, 1)
    s.ccd_seconds = 1.0
    item, _ = await s.next()
    assert (item.visit, item.detector, s.behind) == (2, 0, False), "caught up: arrival order"
    assert s.queue.counts() == {"running": 5, "queued": 1}
    thread.close()


async def test_a_fifo_processor_takes_the_oldest_however_late(tmp_path: Path) -> None:
    thread = SqliteThread("test-overload-fifo")
    s = _scheduler(tmp_path, 0, None, thread, scheduling="fixed", overload=FIFO)
    for visit in (1, 2):
        s.queue.enqueue(visit, 0)
    _age(s.queue, 1, 600.0)
    item, _ = await s.next()
    assert (item.visit, item.detector) == (1, 0) and s.take_deferred() == []
    thread.close()


async def test_in_a_pool_each_old_ccd_is_deferred_once_and_the_newest_taken_first(
    tmp_path: Path, pg_dsn: str
) -> None:
    """Two processors scheduling by availability, both behind: the claim decides who defers
    each old CCD; the other passes it over; neither processes it."""
    thread = SqliteThread("test-overload-pool")
    pg = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    try:
        store = await ClaimStore.connect(pg, "pr_overload_pool")
        a, b = (
            _scheduler(tmp_path, i, store, thread, pool_size=2, claim_grace=0.0, overload=NEWEST)
            for i in (0, 1)
        )
        for s in (a, b):
            for visit in (1, 2):
                for d in (0, 1):
                    s.queue.enqueue(visit, d)
            _age(s.queue, 1, 300.0)
        item_a, _ = await a.next()
        item_b, _ = await b.next()
        assert {(item_a.visit, item_a.detector), (item_b.visit, item_b.detector)} == {
            (2, 0),
            (2, 1),
        }, "the newest visit first, one CCD each"
        deferred = [(i.visit, i.detector) for s in (a, b) for i, _ in s.take_deferred()]
        assert sorted(deferred) == [(1, 0), (1, 1)], "each old CCD deferred by one processor"
        claims = {k: (await store.get(*k)).owner for k in deferred}
        assert all(owner in ("P0", "P1") for owner in claims.values())
        for s in (a, b):
            assert await s.next() == (None, None)
    finally:
        await pg.close()
        thread.close()


async def test_deferred_ccds_are_recorded_and_counted_as_deferred_then_caught_up(
    pg_dsn: str,
) -> None:
    pg = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    try:
        records = await PromptRecords.connect(pg, "pr_overload_report")
        for d in (0, 1):
            await records.record_outcome(
                CcdOutcome(7, d, 1, "deferred", "overload", "90 s behind", "catch-up")
            )
        await records.record_outcome(CcdOutcome(8, 0, 1, "processed", None, "", "none"))
        with pytest.raises(InvalidInputError, match="failure_type"):
            CcdOutcome(9, 0, 1, "deferred", None, "", "none")
        night = await records.fetch_night(visits=[7, 8])
        assert performance_report(night)["deferral"] == {
            "ccdsDeferred": 2,
            "visitsDeferred": 1,
            "ccdsCaughtUp": 0,
            "visitsCaughtUp": 0,
            "ccdsAwaitingCatchUp": 2,
        }
        await records.record_outcome(
            CcdOutcome(7, 0, 2, "processed", None, "daytime catch-up", "catch-up")
        )
        deferral = performance_report(await records.fetch_night(visits=[7, 8]))["deferral"]
        assert (deferral["ccdsCaughtUp"], deferral["visitsCaughtUp"]) == (1, 0)
        assert deferral["ccdsAwaitingCatchUp"] == 1
    finally:
        await pg.close()


def test_the_overload_alarm_is_raised_and_cleared_on_the_dashboard() -> None:
    rules = Rules()
    data = {"severity": "SERIOUS", "reason": "behind by 90 s", "ccdsDeferred": 3}
    (v,) = rules.observe(Event("CcdProcessor0", "overloadAlarm", 1, tai_now(), data))
    assert (v.alarm, v.severity, v.reason) == (
        "Overload.CcdProcessor0",
        Severity.SERIOUS,
        "behind by 90 s",
    )
    (v,) = rules.observe(
        Event("CcdProcessor0", "overloadAlarm", 2, tai_now(), {"severity": "NONE"})
    )
    assert v.severity == Severity.NONE


def test_the_overload_section_reaches_every_processor_and_is_validated(tmp_path: Path) -> None:
    text = DEFAULT_SYSTEM_FILE.read_text()
    tokens = DEFAULT_SYSTEM_FILE.parent / "tokens.toml"
    text = text.replace('tokens_file = "tokens.toml"', f'tokens_file = "{tokens}"')
    path = tmp_path / "system.toml"
    path.write_text(text.replace('policy = "fifo"', 'policy = "newest_first"'))
    config = load_system_config(path)
    processors = [c for c in config.components if c.cls.endswith(":CcdProcessor")]
    assert processors and all(
        CcdProcessorSettings(**c.settings).overload.policy == "newest_first" for c in processors
    )
    path.write_text(text.replace('policy = "fifo"', 'policy = "oldest_last"'))
    with pytest.raises(ConfigurationError, match="overload"):
        load_system_config(path)


async def test_a_starved_processor_records_its_deferrals_and_raises_then_clears_the_alarm(
    tmp_path: Path, pg_dsn: str
) -> None:
    """A real CcdProcessor (fixed, newest_first) whose every listed CCD is past the budget:
    each is ended as deferred (event and durable outcome), the Overload alarm is raised once
    they are, and cleared at its next look, with nothing left behind."""
    events: list[Event] = []
    settings = {
        "dsn": pg_dsn, "registry_schema": "reg_overload_proc", "records_schema": "pr_overload_proc",
        "scheduling": "fixed", "overload": {"policy": "newest_first", "latency_budget": 60.0},
    }  # fmt: skip
    processor = CcdProcessor(
        "CcdProcessor0", sink=events.append, settings=settings, data_dir=tmp_path
    )
    try:
        await processor.start()
        await processor.do_start()
        await processor.do_enable()
        for d in (0, 1):
            processor.queue.enqueue(31, d)
        _age(processor.queue, 31, 300.0)
        processor._wakeup.set()
        alarms = lambda: [e.data for e in events if e.topic == "overloadAlarm"]  # noqa: E731
        await until(alarms, timeout=60)
        processed = [e.data for e in events if e.topic == "ccdProcessed"]
        assert sorted((p["detector"], p["status"], p["failureType"]) for p in processed) == [
            (0, "deferred", "overload"),
            (1, "deferred", "overload"),
        ]
        assert alarms()[0]["severity"] == "SERIOUS" and alarms()[0]["ccdsDeferred"] == 2
        assert "deferred to the daytime catch-up" in alarms()[0]["reason"]
        processor._wakeup.set()
        await until(lambda: len(alarms()) == 2, timeout=60)
        assert alarms()[1]["severity"] == "NONE", "within the budget again: cleared"
        assert processor.queue.counts() == {"deferred": 2}
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
        try:
            records = await PromptRecords.connect(pool, "pr_overload_proc")
            night = await records.fetch_night(visits=[31])
        finally:
            await pool.close()
        assert sorted((o.detector, o.status, o.recovery) for o in night.outcomes) == [
            (0, "deferred", "catch-up"),
            (1, "deferred", "catch-up"),
        ]
    finally:
        await processor.close()
