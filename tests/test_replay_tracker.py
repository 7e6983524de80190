"""The replay never waits silently: what it says when nothing progresses, and completion
judged from the durable record as well as from events."""

from __future__ import annotations

import asyncio

from commands.replay.record import NightRecord
from commands.replay.tracker import NightTracker
from commands.replay.watch import NightWatcher


def _watcher() -> NightWatcher:
    watcher = NightWatcher(client=None)  # type: ignore[arg-type]  # events are not consumed here
    watcher.expect(7, [0, 1, 2, 3])
    return watcher


async def test_a_stalled_night_says_what_it_waits_for() -> None:
    record = NightRecord(
        ingested=frozenset({(7, 0), (7, 1), (7, 2)}),
        processed=frozenset({(7, 0), (7, 1)}),
        published={(7, 0): 5},
    )
    watcher = _watcher()
    watcher.progress.states.update(CcdProcessor1="FAULT", Ingest="ENABLED")
    said: list[str] = []
    twice = asyncio.Event()

    def on_stall(message: str) -> None:
        said.append(message)
        if len(said) >= 2:
            twice.set()

    async def read() -> NightRecord:
        return record

    tracker = NightTracker(watcher, read, stall_seconds=0.3, poll=0.05, on_stall=on_stall)
    task = asyncio.create_task(tracker.run())
    try:
        await asyncio.wait_for(twice.wait(), 10)
    finally:
        task.cancel()
    message = said[0]
    assert message.startswith("nothing has progressed for ")
    assert "1 CCDs to be ingested (7/3)" in message
    assert "1 CCDs to be processed (7/2)" in message
    assert "1 CCDs' alerts (7/1)" in message
    assert "components not ENABLED: CcdProcessor1 (FAULT)" in message
    assert "Ingest" not in message
    assert tracker.stalls == said
    assert not tracker.complete()


async def test_completion_counts_what_an_earlier_run_recorded() -> None:
    watcher = _watcher()
    watcher.progress.processed.add((7, 3))
    watcher.progress.alerts_by_ccd[(7, 3)] = 2
    ended_before = NightRecord(
        processed=frozenset({(7, 0), (7, 1)}),
        published={(7, 0): 1, (7, 1): 0},
        failed={(7, 2): "BadData: saturated"},
    )

    async def read() -> NightRecord:
        return ended_before

    tracker = NightTracker(watcher, read, poll=0.05)
    assert not tracker.complete()
    assert await tracker.wait_complete(5)
    assert tracker.ended() == {(7, 0), (7, 1), (7, 2), (7, 3)}


async def test_an_unreadable_record_is_said_not_raised() -> None:
    from state.errors import StorageError

    async def read() -> NightRecord:
        raise StorageError("connection refused")

    tracker = NightTracker(_watcher(), read, poll=0.05)
    assert not await tracker.wait_complete(0.2)
    assert "the database (connection refused)" in tracker.waiting_for()


async def test_the_record_is_read_from_the_stores_the_components_write(pg_dsn: str) -> None:
    import asyncpg

    from base.prompt_records import PromptRecords
    from base.prompt_records.model import CcdOutcome
    from commands.replay.night_system import night_system_config
    from commands.replay.record import NightRecordReader
    from config.system import load_system_config

    config = night_system_config(
        load_system_config(None), dsn=pg_dsn, processors=1, schema_prefix="rec_"
    )
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    try:
        reader = NightRecordReader(pool, config)
        assert await reader.read([5]) == NightRecord()  # nothing migrated yet: nothing ended
        records = await PromptRecords.connect(pool, "rec_prompt")
        await records.record_outcome(CcdOutcome(5, 0, 1, "processed", n_dia_sources=3))
        await records.record_outcome(
            CcdOutcome(5, 1, 1, "failed", failure_type="BadData", reason="saturated")
        )
        await records.record_outcome(CcdOutcome(5, 2, 1, "processed", n_dia_sources=1))
        await records.record_alerts(5, 0, 3, 1.0e9)
        await records.record_outcome(CcdOutcome(6, 0, 1, "processed"))
        record = await reader.read([5])
    finally:
        await pool.close()
    assert record.processed == {(5, 0), (5, 2)}
    assert record.failed == {(5, 1): "BadData: saturated"}
    assert record.published == {(5, 0): 3}
    assert record.ended == {(5, 0), (5, 1)}, "processed without its alerts has not ended"
    assert record.ingested == frozenset() and record.alerts == 3
