"""A DSN at which no PostgreSQL answers fails at once and names the DSN without its password."""

from __future__ import annotations

import socket
import time

import pytest

from base.db import connect_pool, redacted_dsn
from base.postgres import wait_for_database
from commands.server import serve
from config.system import load_system_config
from state.errors import DatabaseUnavailableError, StorageError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_password_is_left_out_of_a_dsn() -> None:
    assert redacted_dsn("postgresql://dm:s3cret@db:5432/x") == "postgresql://dm:***@db:5432/x"
    assert redacted_dsn("postgresql://db/x?user=dm&password=s3cret&sslmode=require") == (
        "postgresql://db/x?user=dm&password=***&sslmode=require"
    )
    assert redacted_dsn("postgresql://dm@db/x") == "postgresql://dm@db/x"


async def test_a_refused_connection_fails_at_once_not_after_the_timeout() -> None:
    port = _free_port()
    dsn = f"postgresql://dm:s3cret@127.0.0.1:{port}/x"
    began = time.monotonic()
    with pytest.raises(StorageError, match="is not reachable") as info:
        await wait_for_database(dsn, timeout=60)
    assert time.monotonic() - began < 5
    assert f"postgresql://dm:***@127.0.0.1:{port}/x" in str(info.value)
    assert "s3cret" not in str(info.value)


async def test_a_pool_on_an_unreachable_dsn_names_it_without_the_password() -> None:
    port = _free_port()
    with pytest.raises(DatabaseUnavailableError, match=rf"127\.0\.0\.1:{port}") as info:
        await connect_pool(f"postgresql://dm:s3cret@127.0.0.1:{port}/x", what="registry")
    assert "s3cret" not in str(info.value)


async def test_dmcs_run_on_a_dead_dsn_fails_before_starting_anything() -> None:
    """The database is checked before Ray and the components start (they would each wait
    ``startup_timeout`` for it)."""
    port = _free_port()
    config = load_system_config(None).model_copy(update={"startup_timeout": 60.0})
    config = config.model_copy(
        update={
            "database": config.database.model_copy(
                update={"dsn": f"postgresql://dm:s3cret@127.0.0.1:{port}/x"}
            )
        }
    )
    began = time.monotonic()
    with pytest.raises(StorageError, match="is not reachable"):
        async with serve(config, port=0):
            pytest.fail("the system started on a dead database")
    assert time.monotonic() - began < 5
