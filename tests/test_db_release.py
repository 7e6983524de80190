"""A PostgreSQL call that fails gives its connection back and surfaces as a mapped dmcs error:
the reprocessing ledger's lock and unlock, and a CCD processor whose records are refused."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import asyncpg
import pytest

from base.db import connect_pool, q
from base.prompt.ccd_processor import CcdProcessor
from base.prompt_records import STORE as RECORDS_STORE
from base.prompt_records import PromptRecords
from base.reprocess.ledger import Ledger
from state.errors import DatabaseUnavailableError, IncompatibleDatabaseError, StorageError
from state.events import Event
from state.states import State
from tests.standard import until

_names = itertools.count(1)


async def _still_has_its_connection(pool: asyncpg.Pool) -> None:
    """The pool (one connection) hands it out again: nothing kept it."""
    async with asyncio.timeout(10), pool.acquire() as conn:
        assert await conn.fetchval("SELECT 1") == 1


async def test_a_lock_call_that_fails_gives_its_connection_back(pg_dsn: str) -> None:
    pool = await connect_pool(pg_dsn, min_size=1, max_size=1)
    try:
        ledger = await Ledger.connect(pool, f"rp_lock_{next(_names)}")
        with pytest.raises(StorageError, match="reprocess lock"):
            await ledger.lock("bad\x00name")  # PostgreSQL refuses the NUL inside the call
        await _still_has_its_connection(pool)
        await ledger.lock("good")
        await ledger.unlock("good")
        await _still_has_its_connection(pool)
    finally:
        await pool.close()


async def test_an_unlock_whose_server_session_died_is_mapped_and_released(pg_dsn: str) -> None:
    pool = await connect_pool(pg_dsn, min_size=1, max_size=1)
    admin = await asyncpg.connect(pg_dsn)
    try:
        ledger = await Ledger.connect(pool, f"rp_lock_{next(_names)}")
        await ledger.lock("held")
        assert ledger._lock_conn is not None
        pid = ledger._lock_conn.get_server_pid()
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(DatabaseUnavailableError, match="reprocess unlock"):
            await ledger.unlock("held")
        await _still_has_its_connection(pool)
        await ledger.lock("held")  # the dead session's lock went with it
        await ledger.unlock("held")
    finally:
        await admin.close()
        await pool.close()


async def _sessions(admin: asyncpg.Connection) -> int:
    return int(
        await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    )


async def test_a_processor_whose_records_are_refused_keeps_no_pool(
    tmp_path: Path, pg_dsn: str
) -> None:
    """A records schema of newer code refuses the start; the processor's pool is closed, and
    once the schema is put right a second start connects the records as the first should."""
    schema = f"pr_refused_{next(_names)}"
    admin = await asyncpg.connect(pg_dsn)
    pool = await connect_pool(pg_dsn, min_size=1, max_size=1)
    try:
        await PromptRecords.connect(pool, schema)
    finally:
        await pool.close()
    meta = f"UPDATE {q(schema)}.dmcs_metadata SET value = $1 WHERE component = $2 AND key = $3"
    await admin.execute(meta, "99", RECORDS_STORE.component, "schema_version")
    events: list[Event] = []
    settings = {"dsn": pg_dsn, "registry_schema": f"reg_{schema}", "records_schema": schema}
    processor = CcdProcessor(
        "CcdProcessor0", sink=events.append, settings=settings, data_dir=tmp_path
    )
    await processor.start()
    try:
        before = await _sessions(admin)
        with pytest.raises(IncompatibleDatabaseError, match="schema_version"):
            await processor.do_start()
        assert processor.summary_state == State.STANDBY

        async def closed() -> bool:
            return await _sessions(admin) <= before

        await until(closed)
        await admin.execute(
            meta, str(RECORDS_STORE.latest), RECORDS_STORE.component, "schema_version"
        )
        await processor.do_start()
        assert processor.summary_state == State.DISABLED
        assert processor._records is not None, "the second start connected the records"
    finally:
        await processor.close()
        await admin.close()
