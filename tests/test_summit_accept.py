"""How the summit buffer takes the raws of one ``endReadout``: hashing bounded by the cores,
and not held back by the durable writes of the raws before it; and from where the
``acceptImage`` command may take one (its configured folders only)."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import summit.buffer_store
from state.acks import AckCode
from state.clock import tai_now
from state.command import Command
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


async def _accept_image(buffer: Any, payload: dict[str, Any], image: dict[str, Any], url: str):  # type: ignore[no-untyped-def]
    params = {
        "imageName": payload["imageName"],
        "visit": payload["visit"],
        "detector": image["detector"],
        "url": url,
        "checksum": image["checksum"],
    }
    acks = [
        a async for a in buffer.handle(Command("SummitBuffer", "acceptImage", "ocs", 1, params))
    ]
    return acks[-1]


def _staged_without_records(tmp_path: Path, night: Path) -> tuple[Path, Any, dict, Path]:
    """A visit's raws staged in ``tmp_path/daq`` without their readout records (so only the
    hand-off under test brings them in): the staging area, the readout, its first image and
    that image's file."""
    daq = tmp_path / "daq"
    readout = Camera(night, daq).readout(0)
    for record in daq.rglob("endReadout.json"):
        record.unlink()
    image = readout.images[0]
    return daq, readout, image, Path(image["url"].removeprefix("file://"))


@pytest.mark.parametrize("configured", ["accept_dirs", "staging_dir", None])
async def test_accept_image_reads_only_inside_the_configured_folders(
    tmp_path: Path, night: Path, configured: str | None
) -> None:
    """``acceptImage`` with a ``file://`` URL read any file the buffer could: /etc/passwd, a
    ``..`` out of the staging area, a symlink in it to a file elsewhere. Each is refused
    before anything is read (no ``imageRefused``: the raw was never the buffer's to take);
    the staged raw itself is taken."""
    daq, readout, image, staged = _staged_without_records(tmp_path, night)  # the command's
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copyfile(staged, outside / staged.name)
    (daq / "link.fits").symlink_to(outside / staged.name)
    settings: dict[str, Any] = {"reconcile_interval": 3600, "accept_dirs": []}
    if configured == "accept_dirs":
        settings["accept_dirs"] = [str(daq)]
    elif configured == "staging_dir":
        settings["staging_dir"] = str(daq)
    events: list[Event] = []
    buffer = make_buffer(tmp_path, events.append, LocalPeers(), **settings)
    await buffer.start()
    await enable(buffer)
    try:
        await buffer.do_cutLink()
        refused = [
            "file:///etc/passwd",
            f"file://{daq}/../elsewhere/{staged.name}",
            (daq / "link.fits").as_uri(),
        ]
        for url in refused:
            ack = await _accept_image(buffer, readout.payload, image, url)
            assert ack.code == AckCode.CMD_FAILED, url
            assert "outside the folders this buffer takes raws from" in ack.result, url
        ack = await _accept_image(buffer, readout.payload, image, image["url"])
        if configured is None:  # the buffer's own staging area, <data_dir>/staging
            assert ack.code == AckCode.CMD_FAILED
            assert f"takes raws from: {buffer.staging_dir}" in ack.result
            assert (await buffer.rpc_status())["states"] == {}
        else:
            assert ack.code == AckCode.CMD_COMPLETE, ack.result
            assert (await buffer.rpc_status())["states"] == {"buffered": 1}
        assert not [e for e in events if e.topic == "imageRefused"]
    finally:
        await buffer.close()


async def test_end_readout_reads_only_inside_the_configured_folders(
    tmp_path: Path, night: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``endReadout`` read any ``file://`` URL it named (``acceptImage`` was confined): a good
    raw outside the configured folders was taken, ``/etc/passwd`` read and hashed. Now the
    same check refuses each (an ERROR log naming the folders) before anything is read, and
    no staging area outside is learnt for reconciliation; the staged raw itself is taken."""
    reads: list[Path] = []
    read = summit.buffer_store.read_checked_raw

    def counted_read(path: Path, *args: Any) -> Any:
        reads.append(path)
        return read(path, *args)

    monkeypatch.setattr(summit.buffer_store, "read_checked_raw", counted_read)
    daq, readout, image, staged = _staged_without_records(tmp_path, night)  # the events'
    outside = tmp_path / "elsewhere" / staged.parent.name
    outside.mkdir(parents=True)
    shutil.copyfile(staged, outside / staged.name)  # a good raw, the checksum its own
    (daq / "link.fits").symlink_to(outside / staged.name)
    events: list[Event] = []
    buffer = make_buffer(
        tmp_path, events.append, LocalPeers(), accept_dirs=[str(daq)], reconcile_interval=3600
    )
    await buffer.start()
    await enable(buffer)
    try:
        await buffer.do_cutLink()
        refused = [
            (outside / staged.name).as_uri(),
            f"file://{daq}/../elsewhere/{staged.parent.name}/{staged.name}",
            (daq / "link.fits").as_uri(),
            "file:///etc/passwd",
            f"http://camera/{staged.name}",
        ]
        for url in refused:
            data = {**readout.payload, "images": [{**image, "url": url}]}
            await buffer.on_event(Event("Camera", "endReadout", 0, tai_now(), data))
        assert reads == []
        assert (await buffer.rpc_status())["states"] == {}
        said = [e.data["message"] for e in events if e.topic == "logMessage"]
        outside_said = [m for m in said if "outside the folders this buffer takes raws from" in m]
        assert len(outside_said) == 4, said
        assert all(f"from: {buffer.staging_dir}, {daq}" in m for m in outside_said), said
        assert any("expected a file:// URL" in m for m in said), said
        assert not [e for e in events if e.topic == "imageRefused"]
        own = {buffer.staging_dir}
        assert buffer._roots == own, "a staging area outside the folders was learnt"
        await buffer.on_event(readout.event())
        assert (await buffer.rpc_status())["states"] == {"buffered": len(readout.images)}
        took = [Path(i["url"].removeprefix("file://")).resolve() for i in readout.images]
        assert sorted(reads) == sorted(took)
        assert buffer._roots == own | {daq.resolve()}
    finally:
        await buffer.close()
