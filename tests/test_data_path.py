"""The summit-to-base data path as plain objects (LocalPeers) with a real PostgreSQL.

Every scenario ends with the count: images taken = images in the registry, checksums equal.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from state.acks import AckCode
from state.clock import tai_now
from state.command import Command
from state.contracts.values import ContractError
from state.durable import sha256_hex
from state.errors import ChecksumMismatchError
from state.events import Event
from state.states import State
from tests.data_path_helpers import (
    Camera,
    LocalPath,
    enable,
    local_path,
    make_buffer,
    mini_night_dir,
    private_postgres,
    registry_matches,
    start_postgres,
    stop_postgres,
)

_schemas = itertools.count(1)


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mini_night_dir(tmp_path_factory.getbasetemp())


@pytest.fixture
def schema() -> str:
    return f"reg_local_{next(_schemas)}_{int(tai_now() * 1000) % 10**9}"


@pytest.fixture
def camera(night: Path, tmp_path: Path) -> Camera:
    return Camera(night, tmp_path / "daq")


def ingested(path: LocalPath) -> list[Event]:
    return [e for e in path.topic("imageIngested") if e.data["statusCode"] == 0]


async def test_outage_over_several_visits_loses_nothing_and_delivers_in_order(
    tmp_path: Path, pg_dsn: str, schema: str, camera: Camera
) -> None:
    async with local_path(tmp_path, pg_dsn, schema) as path:
        taken = [camera.readout(0)]
        await path.buffer.on_event(taken[0].event())
        await path.wait_for(lambda: len(ingested(path)) == 4)
        await path.buffer.do_cutLink()
        for i in (1, 2, 3, 4):
            taken.append(camera.readout(i))
            await path.buffer.on_event(taken[-1].event())
        status = await path.buffer.rpc_status()
        assert status["backlogCount"] == 16 and status["linkState"] == "down"
        assert status["oldestUnsentAgeSeconds"] >= 0
        assert len(path.topic("imageInBuffer")) == 20
        assert len(ingested(path)) == 4
        await path.buffer.do_restoreLink()
        await path.wait_for(lambda: len(ingested(path)) == 20)
        visits = [e.data["visit"] for e in path.topic("imageTransferred")]
        assert visits == sorted(visits)
        assert (await path.buffer.rpc_status())["backlogCount"] == 0
        assert not list((tmp_path / "summit" / "raws").rglob("*.fits"))
    await registry_matches(pg_dsn, schema, taken)


async def test_raw_corrupted_in_transit_is_detected_and_resent(
    tmp_path: Path, pg_dsn: str, schema: str, camera: Camera
) -> None:
    async with local_path(tmp_path, pg_dsn, schema) as path:
        await path.buffer.do_corruptTransfers(count=3)
        taken = [camera.readout(0), camera.readout(1)]
        for r in taken:
            await path.buffer.on_event(r.event())
        await path.wait_for(lambda: len(ingested(path)) == 8)
        assert path.buffer.link.corrupted == 3
        assert path.buffer.resent == 3
        assert path.ingest.counters["corrupt"] == 3
        warnings = [e for e in path.topic("logMessage") if "re-sending" in e.data["message"]]
        assert len(warnings) == 3
    await registry_matches(pg_dsn, schema, taken)


def _flip(path: Path) -> bytes:
    """Flip one byte in the middle of ``path`` (its pixels); returns the file as it was."""
    good = path.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    path.write_bytes(bad)
    return good


def said(path: LocalPath) -> str:
    return " | ".join(e.data["message"] for e in path.topic("logMessage"))


async def test_a_raw_corrupted_on_summit_storage_is_refused_at_the_base(
    tmp_path: Path, pg_dsn: str, schema: str, camera: Camera
) -> None:
    """The one checksum, computed as the buffer read the camera's file and carried with the
    raw, is what the base verifies: a raw that rotted on summit storage after its checks is
    refused there (nothing stored), replaced from the camera's staged copy and sent again; one
    whose staged copy is bad too is kept and said, and goes once that copy is good again.
    (Sent from their files: raws still held in memory go as they were verified.)"""
    async with local_path(tmp_path, pg_dsn, schema, buffer={"send_from_memory_bytes": 0}) as path:
        await path.buffer.do_cutLink()
        readout = camera.readout(0)
        await path.buffer.on_event(readout.event())
        rotted, both = (await path.buffer.store.unsent())[:2]
        _flip(Path(rotted.path))
        _flip(Path(both.path))
        staged = Path(both.url.removeprefix("file://"))
        good = _flip(staged)
        await path.buffer.do_restoreLink()
        await path.wait_for(lambda: len(ingested(path)) == 3)
        await path.wait_for(lambda: "cannot replace it" in said(path))
        assert path.ingest.counters["corrupt"] >= 2
        assert path.ingest.ledger.find(both.visit, both.detector) is None
        assert not list(path.ingest.storage.rglob(".*.tmp")), "a refused raw leaves nothing"
        text = said(path)
        assert f"{rotted.image_name} detector {rotted.detector} arrived with sha256" in text
        assert "buffered copy was corrupt and is replaced by the camera's" in text
        assert "differs from the camera's" in text  # why the staged copy could not serve
        assert (await path.buffer.rpc_status())["backlogCount"] == 1
        staged.write_bytes(good)
        await path.wait_for(lambda: len(ingested(path)) == 4)
    await registry_matches(pg_dsn, schema, [readout])


async def test_a_raw_held_in_memory_is_sent_as_verified_without_reading_its_file(
    tmp_path: Path, pg_dsn: str, schema: str, camera: Camera
) -> None:
    """The buffer keeps the raws it verified and wrote in memory until the base confirms them:
    the send reads no file, so even a buffered file that rotted after its write goes to the
    base intact, first time; the base stores exactly the camera's bytes."""
    async with local_path(tmp_path, pg_dsn, schema) as path:
        await path.buffer.do_cutLink()
        readout = camera.readout(0)
        await path.buffer.on_event(readout.event())
        unsent = await path.buffer.store.unsent()
        for entry in unsent:
            _flip(Path(entry.path))
        await path.buffer.do_restoreLink()
        await path.wait_for(lambda: len(ingested(path)) == len(unsent))
        assert path.ingest.counters["corrupt"] == 0
        assert path.buffer.resent == 0
        for entry in unsent:
            stored = path.ingest.ledger.find(entry.visit, entry.detector)
            assert stored is not None and stored.checksum == entry.checksum
    await registry_matches(pg_dsn, schema, [readout])


async def test_full_buffer_refuses_loudly_and_keeps_what_it_took(
    tmp_path: Path, pg_dsn: str, schema: str, camera: Camera
) -> None:
    first = camera.readout(0)
    room = sum(i["byteSize"] for i in first.images[:2]) + 1000
    settings = {
        "capacity_bytes": room,
        "reconcile_interval": 600.0,  # refusals, not retries
        "accept_dirs": [str(camera.staging)],
    }
    async with local_path(tmp_path, pg_dsn, schema, buffer=settings) as path:
        await path.buffer.do_cutLink()
        await path.buffer.on_event(first.event())
        assert len(path.topic("imageInBuffer")) == 2
        alarms = path.topic("bufferAlarm")
        assert alarms[-1].data["severity"] == "CRITICAL"
        assert "full" in alarms[-1].data["reason"]
        taken_dets = {e.data["detector"] for e in path.topic("imageInBuffer")}
        left = [i for i in first.images if i["detector"] not in taken_dets]
        refused = left[0]
        command = Command(
            "SummitBuffer",
            "acceptImage",
            "ocs",
            1,
            {
                "imageName": first.payload["imageName"],
                "visit": first.payload["visit"],
                "detector": refused["detector"],
                "url": refused["url"],
                "checksum": refused["checksum"],
            },
        )
        acks = [a async for a in path.buffer.handle(command)]
        assert acks[-1].code == AckCode.CMD_FAILED
        assert "buffer full" in acks[-1].result
        assert path.buffer.refused == 3
        await path.buffer.do_restoreLink()
        await path.wait_for(lambda: len(ingested(path)) == 2)
        for image in left:
            _entry, new = await path.buffer.accept(_offer(first.payload, image))
            assert new
        await path.wait_for(lambda: len(ingested(path)) == 4)
        assert path.topic("bufferAlarm")[-1].data["severity"] == "NONE"
    await registry_matches(pg_dsn, schema, [first])


def _offer(payload: dict, image: dict):  # type: ignore[no-untyped-def]
    from summit.buffer_store import Offer

    return Offer(
        payload["imageName"],
        payload["visit"],
        image["detector"],
        payload["camera"],
        image["url"],
        image["checksum"],
        tai_now(),
    )


async def test_duplicate_deliveries_register_once(
    tmp_path: Path, pg_dsn: str, schema: str, camera: Camera
) -> None:
    async with local_path(tmp_path, pg_dsn, schema) as path:
        readout = camera.readout(0)
        await path.buffer.on_event(readout.event())
        await path.buffer.on_event(readout.event())
        assert len(path.topic("imageInBuffer")) == 4
        await path.wait_for(lambda: len(ingested(path)) == 4)
        image = readout.images[0]
        data = Path(image["url"].removeprefix("file://")).read_bytes()
        meta = {
            "imageName": readout.payload["imageName"],
            "visit": readout.payload["visit"],
            "detector": image["detector"],
            "checksum": image["checksum"],
        }
        for _ in range(3):
            reply = await path.ingest.rpc_receive_raw(meta, data)
            assert reply == {"checksum": image["checksum"], "duplicate": True}
        assert path.ingest.counters["duplicates"] == 3
        assert len(ingested(path)) == 4
    await registry_matches(pg_dsn, schema, [readout])


@pytest.mark.postgres  # its own private PostgreSQL, not the pg_dsn fixture
async def test_postgres_restart_during_ingest_is_retried(tmp_path: Path, camera: Camera) -> None:
    pgdata = tmp_path / "pg"
    with private_postgres(pgdata) as dsn:
        async with local_path(tmp_path, dsn, "registry") as path:
            taken = [camera.readout(0)]
            await path.buffer.on_event(taken[0].event())
            await path.wait_for(lambda: len(ingested(path)) == 4)
            stop_postgres(pgdata)
            try:
                for i in (1, 2):
                    taken.append(camera.readout(i))
                    await path.buffer.on_event(taken[-1].event())
                await path.wait_for(lambda: len(path.topic("imageTransferred")) == 12)
                await path.wait_for(lambda: path.ingest.counters["retries"] >= 2)
                assert len(ingested(path)) == 4
            finally:
                start_postgres(pgdata, dsn)
            await path.wait_for(lambda: len(ingested(path)) == 12)
            said = [e.data["message"] for e in path.topic("logMessage")]
            assert any("registry unreachable" in m for m in said)
            assert any("reachable again" in m for m in said)
        await registry_matches(dsn, "registry", taken)


async def test_buffer_restart_resumes_from_its_manifest(
    tmp_path: Path, pg_dsn: str, schema: str, camera: Camera
) -> None:
    async with local_path(tmp_path, pg_dsn, schema) as path:
        await path.buffer.do_cutLink()
        taken = [camera.readout(0), camera.readout(1)]
        for r in taken:
            await path.buffer.on_event(r.event())
        await path.buffer.close()
        reborn = make_buffer(tmp_path, path.sink, path.peers)
        path.peers.components["SummitBuffer"] = reborn
        await reborn.start()
        await enable(reborn)
        try:
            assert (await reborn.rpc_status())["backlogCount"] == 8
            await path.wait_for(lambda: len(ingested(path)) == 8)
        finally:
            await reborn.close()
    await registry_matches(pg_dsn, schema, taken)


async def test_header_is_merged_by_the_documented_rule(
    tmp_path: Path, pg_dsn: str, schema: str, camera: Camera
) -> None:
    async with local_path(tmp_path, pg_dsn, schema, ingest={"header_timeout": 5.0}) as path:
        readout = camera.readout(0)
        header = fits.Header()
        header["OBSID"] = readout.payload["imageName"]
        header["DATE-BEG"] = "2030-01-01T00:00:00.000"
        header["SEEING"] = 0.61
        header["AIRTEMP"] = 9.5
        header["SHUTTIME"] = 30.02
        folder = tmp_path / "HeaderService" / "headers"  # Ingest's header_dir by default
        folder.mkdir(parents=True)
        file = folder / "hdr.fits"
        fits.PrimaryHDU(header=header).writeto(file)
        data = file.read_bytes()
        lfo = {"url": file.as_uri(), "checksum": sha256_hex(data), "id": header["OBSID"]}
        await path.ingest.on_event(
            Event("HeaderService", "largeFileObjectAvailable", 1, tai_now(), lfo)
        )
        await path.buffer.on_event(readout.event())
        await path.wait_for(lambda: len(ingested(path)) == 4)
        assert all("merged" in e.data["description"] for e in ingested(path))
    raws = await registry_matches(pg_dsn, schema, [readout])
    assert all(r.header_merged and r.file_checksum != r.checksum for r in raws)
    first = next(r for r in raws if r.detector == readout.images[0]["detector"])
    merged = fits.getheader(first.path)
    camera_header = fits.getheader(readout.images[0]["url"].removeprefix("file://"))
    assert merged["DATE-BEG"] == camera_header["DATE-BEG"]
    assert merged["SEEING"] == pytest.approx(0.61)
    assert merged["AIRTEMP"] == pytest.approx(9.5)
    assert merged["SHUTTIME"] == pytest.approx(30.02)
    assert merged["HDRSRC"] == "camera+headerService"
    with fits.open(first.path, checksum=True) as hdul:
        assert len(hdul) == 1 + camera_header["NAMPS"]


async def test_a_header_announced_outside_the_header_folder_is_not_read(
    tmp_path: Path, pg_dsn: str, schema: str, camera: Camera
) -> None:
    """Ingest read any ``file://`` URL a largeFileObjectAvailable named; now only inside its
    ``header_dir`` (a good header elsewhere, ``..`` out of the folder, /etc/passwd: each is a
    WARNING, nothing read or recorded)."""
    folder = tmp_path / "HeaderService" / "headers"
    folder.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    header = fits.Header()
    header["OBSID"] = camera.readout(0).payload["imageName"]
    fits.PrimaryHDU(header=header).writeto(elsewhere / "hdr.fits")
    data = (elsewhere / "hdr.fits").read_bytes()
    async with local_path(tmp_path, pg_dsn, schema) as path:
        urls = [
            (elsewhere / "hdr.fits").as_uri(),
            f"file://{folder}/../../elsewhere/hdr.fits",
            "file:///etc/passwd",
        ]
        for url in urls:
            lfo = {"url": url, "checksum": sha256_hex(data), "id": header["OBSID"]}
            await path.ingest.on_event(
                Event("HeaderService", "largeFileObjectAvailable", 1, tai_now(), lfo)
            )
        said = [e.data["message"] for e in path.topic("logMessage")]
        refused = [m for m in said if "outside the folders Ingest reads headers from" in m]
        assert len(refused) == 3, said
        assert header["OBSID"] not in path.ingest._headers
        assert await path.ingest._l(path.ingest.ledger.header, header["OBSID"]) is None


async def test_a_header_announced_through_a_link_is_read_and_recorded_where_it_lies(
    tmp_path: Path, pg_dsn: str, schema: str, camera: Camera
) -> None:
    """Ingest checked the announced URL with links resolved, then read and recorded the URL as
    announced: a link re-pointed after the check led a later read elsewhere. Now the resolved
    file is read and recorded, and a re-read from the ledger is checked again."""
    folder = tmp_path / "HeaderService" / "headers"
    folder.mkdir(parents=True)
    header = fits.Header()
    header["OBSID"] = name = camera.readout(0).payload["imageName"]
    fits.PrimaryHDU(header=header).writeto(folder / "real.fits")
    data = (folder / "real.fits").read_bytes()
    (folder / "link.fits").symlink_to(folder / "real.fits")
    other = tmp_path / "other.fits"
    fits.PrimaryHDU(header=fits.Header({"OBSID": "OTHER"})).writeto(other)
    async with local_path(tmp_path, pg_dsn, schema) as path:
        lfo = {"url": (folder / "link.fits").as_uri(), "checksum": sha256_hex(data), "id": name}
        await path.ingest.on_event(
            Event("HeaderService", "largeFileObjectAvailable", 1, tai_now(), lfo)
        )
        recorded = await path.ingest._l(path.ingest.ledger.header, name)
        assert recorded is not None and recorded[0] == (folder / "real.fits").resolve().as_uri()
        (folder / "link.fits").unlink()
        (folder / "link.fits").symlink_to(other)
        path.ingest._headers.clear()
        again = await path.ingest._header(name)
        assert again is not None and again["OBSID"] == name
        outside = sha256_hex(other.read_bytes())
        await path.ingest._l(path.ingest.ledger.add_header, name, lfo["url"], outside)
        path.ingest._headers.clear()
        assert await path.ingest._header(name) is None, "a ledger URL leading outside was read"


async def test_missing_header_times_out_and_says_so(
    tmp_path: Path, pg_dsn: str, schema: str, camera: Camera
) -> None:
    async with local_path(tmp_path, pg_dsn, schema) as path:
        readout = camera.readout(1)
        await path.buffer.on_event(readout.event())
        await path.wait_for(lambda: len(ingested(path)) == 4)
        assert all("raw's own headers only" in e.data["description"] for e in ingested(path))
        assert path.topic("ingestStatus")
    raws = await registry_matches(pg_dsn, schema, [readout])
    assert not any(r.header_merged for r in raws)


async def test_bad_handoffs_are_refused_with_reasons(
    tmp_path: Path, pg_dsn: str, schema: str, camera: Camera
) -> None:
    async with local_path(tmp_path, pg_dsn, schema) as path:
        readout = camera.readout(0)
        bad = dict(readout.payload)
        bad["images"] = [
            {**readout.images[0], "checksum": "0" * 64},
            {**readout.images[1], "url": (camera.staging / "nonexistent.fits").as_uri()},
            {**readout.images[2], "detector": 3},
            {"detector": 1},
        ]
        await path.buffer.on_event(Event("Camera", "endReadout", 1, tai_now(), bad))
        said = " | ".join(e.data["message"] for e in path.topic("logMessage"))
        assert "differs from the camera's" in said
        assert "cannot read the staged raw" in said  # a missing raw in the staging area
        assert "camera said" in said
        assert "malformed endReadout" in said
        assert not path.topic("imageInBuffer")
        # (A full buffer's refusal is test_full_buffer_refuses_loudly_and_keeps_what_it_took's:
        # here the reconciliation at enable may already have taken this readout's good raws.)


async def test_a_header_whose_announcement_was_lost_is_found_and_merged(
    tmp_path: Path, pg_dsn: str, schema: str, camera: Camera
) -> None:
    """The header service wrote the header, but its largeFileObjectAvailable never came."""
    readout = camera.readout(2)
    header = fits.Header()
    header["OBSID"] = readout.payload["imageName"]
    header["SEEING"] = 0.66
    folder = tmp_path / "HeaderService" / "headers"  # beside Ingest's own folder
    folder.mkdir(parents=True)
    fits.PrimaryHDU(header=header).writeto(folder / f"{header['OBSID']}.fits")
    (folder / "..evil.fits").write_bytes(b"never read")
    async with local_path(tmp_path, pg_dsn, schema) as path:
        await path.buffer.on_event(readout.event())
        await path.wait_for(lambda: len(ingested(path)) == 4)
        assert all("merged" in e.data["description"] for e in ingested(path))
        assert path.ingest.headers_found == 1, "read once, then from the ledger"
        logged = [e.data["message"] for e in path.topic("logMessage")]
        assert sum("without its announcement" in m for m in logged) == 1
    raws = await registry_matches(pg_dsn, schema, [readout])
    assert all(r.header_merged for r in raws)
    assert fits.getheader(raws[0].path)["SEEING"] == pytest.approx(0.66)


async def test_malformed_raw_transfers_are_refused_and_store_nothing(
    tmp_path: Path, pg_dsn: str, schema: str, camera: Camera
) -> None:
    """Ingest's door (``receive_raw``) holds every transfer to RawTransfer: a bad one is a
    ContractError naming the field, nothing is written or recorded, and Ingest keeps serving."""
    async with local_path(tmp_path, pg_dsn, schema) as path:
        readout = camera.readout(0)
        image = readout.images[0]
        data = Path(image["url"].removeprefix("file://")).read_bytes()
        meta = {
            "imageName": readout.payload["imageName"],
            "visit": readout.payload["visit"],
            "detector": image["detector"],
            "checksum": image["checksum"],
        }
        for bad, field in (
            ({**meta, "imageName": "../../outside"}, "'imageName'"),
            ({**meta, "visit": str(meta["visit"])}, "'visit'"),
            ({**meta, "detector": 2**64}, "'detector'"),
            ({**meta, "checksum": image["checksum"].upper()}, "'checksum'"),
            ({**meta, "endReadoutTai": float("nan")}, "'endReadoutTai'"),
            ({"visit": 1}, "'imageName': Field required"),
        ):
            with pytest.raises(ContractError, match=f"receive_raw: field {field}"):
                await path.ingest.rpc_receive_raw(bad, data)
        with pytest.raises(ContractError, match="the raw must be bytes"):
            await path.ingest.rpc_receive_raw(meta, data.decode("latin-1"))
        pixels = np.frombuffer(data, np.uint8)
        for shaped in (pixels.reshape(-1, 2880), pixels.view(np.uint16), pixels[::2]):
            with pytest.raises(ContractError, match="flat uint8 array"):
                await path.ingest.rpc_receive_raw(meta, shaped)
        sized = {**meta, "byteSize": len(data)}
        with pytest.raises(ChecksumMismatchError, match=f"arrived with {len(data) - 2880} bytes"):
            await path.ingest.rpc_receive_raw(sized, pixels[:-2880])
        assert path.ingest.summary_state == State.ENABLED
        assert not list(path.ingest.storage.rglob("*")), "nothing written to base storage"
        assert not list(tmp_path.rglob("outside*"))
        assert path.ingest.ledger.find(meta["visit"], meta["detector"]) is None
        await path.buffer.on_event(readout.event())
        await path.wait_for(lambda: len(ingested(path)) == 4)
    await registry_matches(pg_dsn, schema, [readout])


async def test_a_truncated_raw_is_refused_once_and_its_ccd_counted_failed(
    tmp_path: Path, camera: Camera
) -> None:
    """A raw the camera staged truncated (its checksum that of the truncated file) can never be
    buffered: the buffer says so once (``imageRefused``, with the reason), and the replay's
    watcher counts that CCD failed, so the night ends instead of waiting for it."""
    from commands.replay.watch import NightWatcher
    from state.peers import LocalPeers
    from tests.data_path_helpers import make_buffer

    events: list[Event] = []
    buffer = make_buffer(tmp_path, events.append, LocalPeers())
    await enable(buffer)
    readout = camera.readout(0)
    staged = Path(readout.images[0]["url"].removeprefix("file://"))
    staged.write_bytes(staged.read_bytes()[:20000])
    readout.payload["images"][0]["checksum"] = sha256_hex(staged.read_bytes())
    visit, bad = readout.payload["visit"], readout.images[0]["detector"]
    try:
        await buffer.on_event(readout.event())
        await buffer.on_event(readout.event())  # the camera's retry: said once
        await buffer.reconcile()  # and its readout record: said once
    finally:
        await buffer.close()
    refused = [e.data for e in events if e.topic == "imageRefused"]
    assert [(r["visit"], r["detector"]) for r in refused] == [(visit, bad)]
    assert "truncated" in refused[0]["reason"]
    assert len([e for e in events if e.topic == "imageInBuffer"]) == 3

    async def stream() -> AsyncIterator[Event]:
        for event in events:
            yield event

    watcher = NightWatcher(client=None)  # type: ignore[arg-type]
    watcher.expect(visit, [i["detector"] for i in readout.images])
    for image in readout.images[1:]:
        watcher.progress.processed.add((visit, image["detector"]))
        watcher.progress.alerts_by_ccd[(visit, image["detector"])] = 0
    assert not watcher.progress.complete
    await watcher.run(stream())  # type: ignore[arg-type]
    assert watcher.progress.failed[(visit, bad)].startswith("rawRefused: ")
    assert "truncated" in watcher.progress.failed[(visit, bad)]
    assert watcher.progress.complete
