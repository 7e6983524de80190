"""How the summit buffer takes the raws of one ``endReadout``: hashing bounded by the cores,
and not held back by the durable writes of the raws before it."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

import summit.buffer_store
from state.events import Event
from state.peers import LocalPeers
from tests.data_path_helpers import Camera, enable, make_buffer, mini_night_dir


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mini_night_dir(tmp_path_factory.getbasetemp())


async def test_a_visits_raws_are_hashed_while_earlier_ones_are_written(
    tmp_path: Path, night: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one send in flight, the next raw is read and hashed while the previous raw's
    durable write is still going (before, both waited on one bound of ``max_in_flight``);
    never more raws hashed at once than the store has slots; every raw ends up buffered.

    The overlap is counted from both ends (a hash starting during a write, or a write starting
    during a hash), so a loaded machine that schedules the threads late cannot hide it."""
    lock = threading.Lock()
    hashing, writing = [0], [0]
    most_hashing, overlaps = [0], [0]
    read, write = summit.buffer_store.read_checked_raw, summit.buffer_store.write_array_direct

    def counted_read(*args: Any) -> Any:
        with lock:
            hashing[0] += 1
            most_hashing[0] = max(most_hashing[0], hashing[0])
            overlaps[0] += writing[0] > 0
        try:
            time.sleep(0.1)  # a 70 MB raw's hashing
            return read(*args)
        finally:
            with lock:
                hashing[0] -= 1

    def slow_write(path: Path, data: Any) -> None:
        with lock:
            writing[0] += 1
            overlaps[0] += hashing[0] > 0
        try:
            time.sleep(0.3)  # a slow disk's fsync
            write(path, data)
        finally:
            with lock:
                writing[0] -= 1

    monkeypatch.setattr(summit.buffer_store, "read_checked_raw", counted_read)
    monkeypatch.setattr(summit.buffer_store, "write_array_direct", slow_write)
    events: list[Event] = []
    buffer = make_buffer(
        tmp_path, events.append, LocalPeers(), max_in_flight=1, reconcile_interval=3600
    )
    await buffer.start()
    await enable(buffer)
    try:
        await buffer.do_cutLink()
        readout = Camera(night, tmp_path / "daq").readout(0)
        for record in (tmp_path / "daq").rglob("endReadout.json"):
            record.unlink()  # only the event hands these raws over, never a reconciliation
        await buffer.on_event(readout.event())
        buffered = [e for e in events if e.topic == "imageInBuffer"]
        assert len(buffered) == len(readout.images) >= 3
        assert (await buffer.rpc_status())["states"] == {"buffered": len(readout.images)}
        assert most_hashing[0] <= buffer.store.hashing_slots
        assert overlaps[0] >= 1, "no raw was hashed while another one was being written"
    finally:
        await buffer.close()
