"""The night driver against a real system: real Ray, gateway, client and HeaderService."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from astropy.io import fits

from commands.client import Client, EventStream
from commands.night_driver import DriveProgress, NightDriver
from commands.server import RunningSystem
from state.errors import InvalidInputError
from state.events import Event
from state.states import State
from summit.night_files import open_night
from summit.simulation import plan_night, run_night
from tests.conftest import TOKENS, component_spec
from tests.standard import until
from tests.test_sim_night import CAMERA_FIELDS, TELEMETRY_FIELDS

SPEED = 25.0


@pytest.fixture(scope="module")
async def system(system_factory: Any) -> RunningSystem:
    spec = component_spec(
        "HeaderService", "summit.header_service:HeaderService", settings={"readout_timeout": 5.0}
    )
    return await system_factory(spec)


@pytest.fixture
async def ocs(system: RunningSystem) -> AsyncIterator[Client]:
    async with Client(system.ws_url, token=TOKENS["ocs"]) as client:
        await client.set_state("HeaderService", State.ENABLED)
        yield client


class Recorder:
    """Every Camera, OCS and HeaderService event (but heartbeats) seen while recording."""

    def __init__(self) -> None:
        self.seen: list[Event] = []
        self.changed = asyncio.Condition()

    async def collect(self, events: EventStream) -> None:
        async for event in events:
            if event.topic != "heartbeat":
                async with self.changed:
                    self.seen.append(event)
                    self.changed.notify_all()

    async def until(self, predicate: Callable[[list[Event]], bool], timeout: float = 20) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(lambda: predicate(self.seen))


@contextlib.asynccontextmanager
async def recording(client: Client) -> AsyncIterator[Recorder]:
    recorder = Recorder()
    events = await client.open_subscription(["Camera", "OCS", "HeaderService"], snapshot=False)
    task = asyncio.create_task(recorder.collect(events))
    try:
        yield recorder
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await events.aclose()


async def test_drive_mini_night(ocs: Client, mini_night: Path, tmp_path: Path) -> None:
    progress: list[DriveProgress] = []
    driver = NightDriver(
        ocs, mini_night, tmp_path / "daq", speed=SPEED, on_progress=progress.append
    )
    async with recording(ocs) as recorder:
        summary = await driver.run()
        await recorder.until(
            lambda seen: sum(e.topic == "largeFileObjectAvailable" for e in seen) == 2
        )
    seen = recorder.seen

    assert summary.ok, summary.problems
    assert not summary.rendered_on_the_fly
    assert (summary.visits_sent, summary.ccds_staged) == (2, 8)
    assert summary.events_sent == len(driver.events) == len(progress)
    assert progress[-1].events_sent == progress[-1].events_total
    assert summary.max_lateness_s < 2.0
    source = open_night(mini_night)

    sent = [e for e in seen if e.component in ("Camera", "OCS")]
    assert [e.topic for e in sent] == [e.name for e in driver.events]
    for got, want in zip(sent, driver.events, strict=True):
        assert got.component == ("OCS" if want.kind == "telemetry" else "Camera")
        assert {k: v for k, v in got.data.items() if k != "images"} == want.payload
    for event in sent:
        fields = CAMERA_FIELDS.get(event.topic) or TELEMETRY_FIELDS[event.topic]
        assert fields <= set(event.data), event.topic
    readouts = [e for e in sent if e.topic == "endReadout"]
    for readout, visit in zip(readouts, source.visits, strict=True):
        images = readout.data["images"]
        assert [i["detector"] for i in images] == readout.data["detectors"] == [0, 1, 2, 3]
        for image in images:
            staged = Path(urlparse(image["url"]).path)
            payload = staged.read_bytes()
            assert staged.is_relative_to(tmp_path / "daq" / readout.data["imageName"])
            assert image["checksum"] == hashlib.sha256(payload).hexdigest()
            assert image["byteSize"] == len(payload)
            assert payload == source.raw(visit, image["detector"]).read_bytes()

    headers = [e for e in seen if e.topic == "largeFileObjectAvailable"]
    for lfo, visit in zip(headers, source.visits, strict=True):
        header = fits.getheader(Path(urlparse(lfo.data["url"]).path))
        assert (
            header["OBSID"]
            == lfo.data["id"]
            == f"MN_O_{visit.day_obs}_{visit.visit_id % 100000:06d}"
        )
        assert header["VISIT"] == visit.visit_id
        assert (header["RA"], header["DEC"]) == (visit.ra, visit.dec)
        assert header["ROTSKYPA"] == visit.rot_sky_pos
        assert 0 < header["ALTSTART"] <= 90 and 0 <= header["AZSTART"] < 360
        assert header["AMSTART"] == pytest.approx(visit.airmass, abs=0.01)
        assert header["FILTBAND"] == visit.band and header["FILTER"].startswith(visit.band)
        assert header["SEEING"] == pytest.approx(visit.seeing_eff, rel=0.3)
        for key in ("TRANSPAR", "AIRTEMP", "PRESSURE", "HUMIDITY", "WINDSPD", "DOMEAZ"):
            assert key in header
        assert header["MJD-BEG"] == pytest.approx(visit.mjd_start, abs=1e-6)
        assert header["EXPTIME"] == visit.exptime


async def test_renders_on_the_fly_when_raws_were_not_rendered(
    ocs: Client, mini_night: Path, tmp_path: Path
) -> None:
    night = tmp_path / "night"
    run_night(plan_night("mini", 2, 1, night), calibs=False, templates=False)
    driver = NightDriver(ocs, night, tmp_path / "daq", speed=50.0, visits=1)
    summary = await driver.run()
    assert summary.ok and summary.rendered_on_the_fly
    assert (summary.visits_total, summary.ccds_staged) == (1, 4)
    source = open_night(mini_night)
    visit = source.visits[0]
    staged = sorted((tmp_path / "daq").glob("*/*.fits"))
    assert len(staged) == 4
    for path, det in zip(staged, range(4), strict=True):
        assert path.read_bytes() == source.raw(visit, det).read_bytes()


async def test_replays_an_opsim_schedule(ocs: Client, mini_night: Path, tmp_path: Path) -> None:
    opsim = mini_night / "schedule.sqlite"
    with pytest.raises(InvalidInputError, match="unknown camera"):
        NightDriver(ocs, opsim, tmp_path / "daq", camera="nope")
    driver = NightDriver(ocs, opsim, tmp_path / "daq", speed=50.0, camera="mini", seed=1)
    summary = await driver.run()
    assert summary.ok and summary.rendered_on_the_fly and summary.ccds_staged == 8
    source = open_night(mini_night)
    for visit in source.visits:
        for det in source.camera.detectors:
            staged = tmp_path / "daq" / f"MN_O_{visit.day_obs}_{visit.visit_id % 100000:06d}"
            staged = staged / f"{staged.name}_{det.name}.fits"
            assert staged.read_bytes() == source.raw(visit, det.id).read_bytes()


async def test_raw_vanishing_during_the_night_is_reported(
    ocs: Client, mini_night: Path, tmp_path: Path
) -> None:
    night = tmp_path / "night"
    shutil.copytree(mini_night, night, ignore=shutil.ignore_patterns("calibs", "templates"))
    driver = NightDriver(ocs, night, tmp_path / "daq", speed=50.0, visits=1)
    lost = driver.source.raw(driver.source.visits[0], 2)
    lost.unlink()

    def mine(seen: list[Event]) -> list[Event]:
        return [e for e in seen if e.topic == "endReadout" and str(tmp_path) in str(e.data)]

    async with recording(ocs) as recorder:
        summary = await driver.run()
        await recorder.until(lambda seen: bool(mine(seen)))
    assert not summary.ok
    assert summary.ccds_staged == 3 and len(summary.problems) == 1
    assert "detector 2" in summary.problems[0] and str(lost) in summary.problems[0]
    readout = mine(recorder.seen)[0]
    assert [i["detector"] for i in readout.data["images"]] == [0, 1, 3]


async def test_bad_input_is_refused_before_anything_is_sent(
    ocs: Client, mini_night: Path, tmp_path: Path
) -> None:
    daq = tmp_path / "daq"
    with pytest.raises(InvalidInputError, match="does not exist"):
        NightDriver(ocs, tmp_path / "nowhere", daq)
    for speed in (0.0, -2.0, float("nan")):
        with pytest.raises(InvalidInputError, match="speed"):
            NightDriver(ocs, mini_night, daq, speed=speed)
    with pytest.raises(InvalidInputError, match="visits"):
        NightDriver(ocs, mini_night, daq, visits=0)
    with pytest.raises(InvalidInputError, match="manifest"):
        NightDriver(ocs, mini_night, daq, camera="comcam")
    with pytest.raises(InvalidInputError, match="not a simulated night"):
        NightDriver(ocs, tmp_path, daq)
    blocked = tmp_path / "file"
    blocked.write_text("in the way")
    with pytest.raises(InvalidInputError, match="not writable"):
        NightDriver(ocs, mini_night, blocked / "daq")
    night = tmp_path / "night"
    night.mkdir()
    for name in ("manifest.json", "schedule.sqlite"):
        shutil.copy(mini_night / name, night / name)
    with pytest.raises(InvalidInputError, match="8 pre-rendered raw"):
        NightDriver(ocs, night, daq)
    assert not daq.exists() or not any(daq.iterdir())


async def test_refused_token_fails_loudly(
    system: RunningSystem, mini_night: Path, tmp_path: Path
) -> None:
    async with Client(system.ws_url, token=TOKENS["scientist"]) as client:
        driver = NightDriver(
            client, mini_night, tmp_path / "daq", speed=SPEED, handshake_timeout=1.0
        )
        with pytest.raises(InvalidInputError, match="OCS identity"):
            await driver.run()


async def test_cli_drive(system: RunningSystem, mini_night: Path, tmp_path: Path) -> None:
    dmcs = Path(sys.executable).with_name("dmcs")
    env = {**os.environ, "DMCS_URL": system.ws_url, "DMCS_TOKEN": TOKENS["ocs"]}
    args = ["simulate", "drive", "--night", str(mini_night), "--speed", "50", "--visits", "1"]
    proc = await asyncio.create_subprocess_exec(
        str(dmcs),
        *args,
        "--staging",
        str(tmp_path / "daq"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    summary = json.loads(out)
    assert summary["ok"] and summary["ccds_staged"] == 4 and summary["visits_sent"] == 1
    assert "visit 1/1" in err.decode()
    bad = await asyncio.create_subprocess_exec(
        str(dmcs), *args[:-4], "--speed", "0", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(bad.communicate(), 60)
    assert bad.returncode == 2 and "--speed" in err.decode()


async def test_cli_drive_stages_where_the_running_buffer_takes_raws(
    system_factory: Any, mini_night: Path, tmp_path: Path
) -> None:
    """Against a SummitBuffer with no ``staging_dir`` set (as ``dmcs run`` ships it), the
    drive once staged into NIGHT/staging, which the buffer refuses to read from: every raw
    lost. Now it stages into the buffer's own area, and a ``--staging`` outside the buffer's
    folders is refused before anything is sent."""
    running = await system_factory(
        component_spec("SummitBuffer", "summit.summit_buffer:SummitBuffer", settings=_FAST)
    )
    dmcs = Path(sys.executable).with_name("dmcs")
    env = {**os.environ, "DMCS_URL": running.ws_url, "DMCS_TOKEN": TOKENS["ocs"]}
    args = ["simulate", "drive", "--night", str(mini_night), "--speed", "50", "--visits", "1"]
    async with Client(running.ws_url, token=TOKENS["ocs"]) as ocs:
        await ocs.set_state("SummitBuffer", State.ENABLED)
        own = Path((await ocs.component_detail("SummitBuffer"))["stagingDir"])
        assert own.is_relative_to(Path(running.system.config.data_dir))
        outside = await asyncio.create_subprocess_exec(
            str(dmcs), *args, "--staging", str(tmp_path / "daq"), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(outside.communicate(), 120)
        assert outside.returncode == 1 and "outside the folders the SummitBuffer" in err.decode()
        assert not (tmp_path / "daq").exists(), "nothing staged"
        proc = await asyncio.create_subprocess_exec(
            str(dmcs), *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()
        summary = json.loads(out)
        assert summary["ok"] and summary["ccds_staged"] == 4
        assert Path(summary["staging"]) == own
        buffer = running.system.handle("SummitBuffer")

        async def taken() -> bool:
            return sum((await buffer.rpc.remote("status"))["states"].values()) == 4

        await until(taken, timeout=30)


_FAST = {"status_interval": 0.5, "retry_initial": 0.05, "retry_max": 0.5}
