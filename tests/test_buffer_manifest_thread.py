"""The summit buffer's manifest never runs SQLite on the event loop.

Every statement on the manifest's connection is checked: one run on a thread with a running
asyncio loop (the buffer's own) is recorded as a violation. The buffer takes raws, sends them,
answers status, expires retained raws, refuses a raw when full, reconciles the camera's
readout records and restarts from its manifest, all with the check in place.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import traceback
from pathlib import Path
from typing import Any

import pytest

import summit.buffer_manifest
from state.errors import BufferFullError
from summit.buffer_manifest import Row
from summit.buffer_store import BufferStore, Offer
from tests.data_path_helpers import Camera, enable, local_path, make_buffer, mini_night_dir

#: The manifest is opened in the component's constructor, as the ingest ledger and the work list
#: are (where Ray builds an actor, before its loop serves it); every call after that is checked.
OPENING = summit.buffer_manifest.__file__


class LoopCheckedConnection:
    """A SQLite connection that records every statement run on an event loop's thread."""

    def __init__(self, db: sqlite3.Connection, violations: list[str], threads: set[int]) -> None:
        self._db = db
        self.violations = violations
        self.threads = threads

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self.threads.add(threading.get_ident())
        else:
            stack = traceback.extract_stack()
            if not any(f.name == "__init__" and f.filename == OPENING for f in stack):
                where = "".join(traceback.format_list(stack[-6:-1]))
                self.violations.append(f"{sql.split(maxsplit=1)[0]} on the event loop:\n{where}")
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], set[int]]:
    """(statements run on the loop, threads that ran the others) of every manifest opened."""
    violations: list[str] = []
    threads: set[int] = set()
    opened = summit.buffer_manifest.open_durable

    def open_checked(path: Path, store: Any) -> Any:
        return LoopCheckedConnection(opened(path, store), violations, threads)

    monkeypatch.setattr(summit.buffer_manifest, "open_durable", open_checked)
    return violations, threads


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mini_night_dir(tmp_path_factory.getbasetemp())


async def test_the_buffer_never_runs_sqlite_on_its_event_loop(
    tmp_path: Path, pg_dsn: str, night: Path, checked: tuple[list[str], set[int]]
) -> None:
    violations, threads = checked
    camera = Camera(night, tmp_path / "daq")
    settings = {"retention_seconds": 0.3, "staging_dir": str(camera.staging)}
    async with local_path(tmp_path, pg_dsn, "reg_loop_check", buffer=settings) as path:
        await path.buffer.on_event(camera.readout(0).event())
        await path.wait_for(lambda: len(path.topic("imageTransferred")) == 4)
        await path.buffer.do_cutLink()
        await path.buffer.on_event(camera.readout(1).event())
        status = await path.buffer.rpc_status()
        assert status["backlogCount"] == 4 and status["oldestUnsentAgeSeconds"] >= 0
        assert status["states"].get("buffered") == 4
        camera.readout(2)  # staged with its readout record, its endReadout never sent
        assert await path.buffer.reconcile() == 4
        path.buffer.store.capacity = 10
        with pytest.raises(BufferFullError):
            await path.buffer.accept(_offer(camera.readout(3)))
        path.buffer.store.capacity = 10**12
        await path.buffer.do_restoreLink()
        await path.wait_for(lambda: len(path.topic("imageTransferred")) == 12)
        await path.wait_for(lambda: path.buffer.store.usage().retained_count == 0, 10)
        await path.buffer.close()
        reborn = make_buffer(tmp_path, path.sink, path.peers, **settings)
        path.peers.components["SummitBuffer"] = reborn
        await reborn.start()
        await enable(reborn)
        try:
            assert (await reborn.rpc_status())["states"] == {"deleted": 12}
        finally:
            await reborn.close()
    assert threads, "the manifest's statements went through the check"
    assert not violations, f"{len(violations)} statements on the loop; the first:\n{violations[0]}"


async def test_reserving_makes_room_in_the_same_transaction_and_keeps_figures(
    tmp_path: Path,
) -> None:
    """Reserve inserts a raw with the room it takes (retained raws dropped oldest first), a
    second reserve of the same raw inserts nothing, and the cached totals the loop reads equal
    a fresh count after every kind of write."""
    store = BufferStore(tmp_path, capacity=3000)
    manifest = store.manifest

    def row(i: int) -> Row:
        return Row(f"img{i}", i, 1, "mini", f"{i:064x}", 1000, str(tmp_path / f"r{i}"), "", 0, i)

    async def figures_are_fresh() -> None:
        assert manifest.figures == await store._m(manifest._measure)

    try:
        for i in range(3):
            assert (await store._m(manifest.reserve, row(i), 3000)).state == "receiving"
        again = await store._m(manifest.reserve, row(0), 3000)
        assert again.seq == 1 and store.totals() == {"receiving": (3, 3000)}
        await store._m(manifest.set_state, 1, "buffered")
        await store._m(manifest.set_state, 2, "transferred", 5.0)
        (tmp_path / "r1").write_bytes(b"retained")
        await store._m(manifest.remove, 3)
        await figures_are_fresh()
        assert store.oldest_unsent_tai() == 0.0
        assert (await store._m(manifest.reserve, row(3), 2500)).seq == 4
        assert not (tmp_path / "r1").exists(), "the retained raw made room"
        assert store.totals() == {
            "buffered": (1, 1000),
            "receiving": (1, 1000),
            "deleted": (1, 1000),
        }
        await figures_are_fresh()
        with pytest.raises(BufferFullError, match=r"img4 detector 1 \(1,000 bytes\) refused"):
            await store._m(manifest.reserve, row(4), 2500)
        assert await store.find(4, 1) is None
        await figures_are_fresh()
    finally:
        await store.close()


def _offer(readout: Any) -> Offer:
    from state.clock import tai_now

    image = readout.images[0]
    p = readout.payload
    return Offer(
        p["imageName"], p["visit"], image["detector"], p["camera"], image["url"],
        image["checksum"], tai_now(),
    )  # fmt: skip
