"""The replay's summary reads the night's records again while the database is away."""

from __future__ import annotations

import pytest

from commands.replay.main import _patiently
from state.errors import ConnectionLostError, StorageError


async def test_a_database_away_for_a_while_is_waited_for() -> None:
    calls = 0

    async def read() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionLostError("database unavailable: restarting")
        return "records"

    assert await _patiently(read, patience=10) == "records"
    assert calls == 3


async def test_a_database_away_too_long_or_broken_is_an_error() -> None:
    async def away() -> str:
        raise ConnectionLostError("database unavailable")

    async def broken() -> str:
        raise StorageError("relation does not exist")

    with pytest.raises(ConnectionLostError):
        await _patiently(away, patience=1.5)
    with pytest.raises(StorageError):
        await _patiently(broken, patience=10)
