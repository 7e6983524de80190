"""Warm start: each component runs its numba kernels on a small real input when it starts.

The CCD processor's worker processes one simulated CCD; the Association round-trips every
APDB table through its COPY codecs; the AlertPublisher encodes and decodes a small batch.
Start waits for the warm-up within its command's timeout, lets a longer one go on, and fails
when the warm-up fails. ``benchmarks/cold_start.py`` measures what it buys.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from base.alerts.batch import BufferPool
from base.alerts.schema import latest_schema
from base.alerts.warm import warm_up_encoder
from base.apdb.warm import warm_up_codecs
from base.prompt.ccd_processor import CcdProcessor
from base.warm_up import needs_warm_up
from state.errors import StartupError
from state.events import Event
from state.states import State


def test_the_apdb_codecs_and_the_alert_encoder_read_back_what_they_write() -> None:
    assert warm_up_codecs() > 0
    assert warm_up_encoder(latest_schema(), BufferPool(granule=1 << 16)) > 0


def _processor(
    tmp_path: Path, pg_dsn: str, events: list[Event], **settings: object
) -> CcdProcessor:
    base = {"dsn": pg_dsn, "registry_schema": "reg_warm", "records_schema": "prompt_warm"}
    return CcdProcessor(
        "CcdProcessor0", sink=events.append, settings={**base, **settings}, data_dir=tmp_path
    )


async def test_start_warms_the_worker_once_and_does_not_wait_past_its_limit(
    tmp_path: Path, pg_dsn: str
) -> None:
    events: list[Event] = []
    processor = _processor(tmp_path, pg_dsn, events, warm_up_wait=0.0)
    await processor.start()
    try:
        await processor.do_start()  # returns at once: the warm-up goes on in the worker
        assert processor.summary_state == State.DISABLED
        logged = [e.data["message"] for e in events if e.topic == "logMessage"]
        assert any("warm-up still running after 0 s" in m for m in logged), logged
        warming = processor._warming
        assert warming is not None and not needs_warm_up(warming)
        await asyncio.wait_for(asyncio.shield(warming), 300)
        pid = processor.worker.pid
        assert pid is not None and processor._warm_pid == pid
        await processor.do_standby()
        await processor.do_start()
        assert processor._warming is None, "the same worker is not warmed twice"
        assert processor.worker.pid == pid
    finally:
        await processor.close()


async def test_a_warm_up_that_fails_fails_the_start(tmp_path: Path, pg_dsn: str) -> None:
    events: list[Event] = []
    processor = _processor(tmp_path, pg_dsn, events, warm_up_timeout=0.01)
    await processor.start()
    try:
        with pytest.raises(StartupError, match=r"CCD processing failed its warm-up.*not finish"):
            await processor.do_start()
        assert processor.summary_state == State.STANDBY
        assert processor._warm_pid is None
    finally:
        await processor.close()
