"""Ingest on real Ray: the standard component tests, and the whole path with the header service."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
from astropy.io import fits

from commands.client import Client
from commands.server import RunningSystem
from state.errors import InvalidInputError, RetriableError, StorageError
from state.states import State
from tests.conftest import TOKENS, component_spec
from tests.data_path_helpers import Camera, mini_night_dir, registry_matches
from tests.standard import StandardComponentTests, wait_for_event
from tests.test_header_service import send_telemetry

INGEST = "base.ingest:Ingest"
FAST = {"status_interval": 0.5, "retry_initial": 0.05, "retry_max": 0.5}


def _raw(running: RunningSystem, index: int) -> tuple[dict[str, Any], bytes]:
    night = mini_night_dir(Path(running.system.config.data_dir).parent)
    readout = Camera(night, running.system.config.data_dir / "daq").readout(index)
    image = readout.images[0]
    meta = {
        "imageName": readout.payload["imageName"],
        "visit": readout.payload["visit"],
        "detector": image["detector"],
        "checksum": image["checksum"],
        "camera": "mini",
    }
    return meta, Path(image["url"].removeprefix("file://")).read_bytes()


class TestIngest(StandardComponentTests):
    component_class = INGEST
    name = "Ingest"

    @pytest.fixture(scope="class")
    async def running(self, system_factory: Any, pg_dsn: str) -> RunningSystem:
        type(self).settings = {
            "dsn": pg_dsn,
            "registry_schema": "reg_ingest_std",
            "header_timeout": 1.0,
            **FAST,
        }
        return await system_factory(self.spec())

    def storage(self, running: RunningSystem) -> Path:
        return running.system.config.data_dir / self.name / "raws"

    async def cause_fault(self, running: RunningSystem, client: Client) -> None:
        """Base storage made unwritable, then a raw arrives (after the test subscribed)."""
        target = self.storage(running)
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("a file where base storage should be")
        meta, data = _raw(running, 5)

        async def deliver() -> None:
            await asyncio.sleep(1.0)
            with pytest.raises(StorageError, match="cannot write"):
                await running.system.handle(self.name).rpc.remote("receive_raw", meta, data)

        self._delivery = asyncio.get_running_loop().create_task(deliver())

    def repair_fault(self, running: RunningSystem) -> None:
        assert self._delivery.done() and self._delivery.exception() is None
        self.storage(running).unlink()

    async def test_refuses_raws_unless_enabled_and_checks_them(
        self, running: RunningSystem, ocs: Client
    ) -> None:
        handle = running.system.handle(self.name)
        meta, data = _raw(running, 4)
        with pytest.raises(RetriableError, match="not taking raws"):
            await handle.rpc.remote("receive_raw", meta, data)
        await ocs.set_state(self.name, State.ENABLED)
        with pytest.raises(InvalidInputError, match="receive_raw: field 'imageName'"):
            await handle.rpc.remote("receive_raw", {"visit": 1}, data)
        with pytest.raises(RetriableError, match="arrived with sha256"):
            await handle.rpc.remote("receive_raw", meta, data[:-1] + b"x")
        events = await ocs.open_subscription([self.name], ["imageIngested"], snapshot=False)
        reply = await handle.rpc.remote("receive_raw", meta, data)
        assert reply == {"checksum": meta["checksum"], "duplicate": False}
        ingested = await wait_for_event(events, lambda e: e.data["visit"] == meta["visit"])
        assert ingested.data["statusCode"] == 0
        assert ingested.data["checksum"] == meta["checksum"]
        again = await handle.rpc.remote("receive_raw", meta, data)
        assert again["duplicate"] is True
        await events.aclose()


async def test_whole_path_with_the_header_service(
    system_factory: Any, pg_dsn: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    schema = "reg_whole"
    running = await system_factory(
        component_spec("HeaderService", "summit.header_service:HeaderService"),
        component_spec(
            "SummitBuffer",
            "summit.summit_buffer:SummitBuffer",
            settings={**FAST, "accept_dirs": [str(tmp_path / "daq")]},
        ),
        component_spec(
            "Ingest",
            INGEST,
            settings={"dsn": pg_dsn, "registry_schema": schema, "header_timeout": 5.0, **FAST},
        ),
    )
    camera = Camera(mini_night_dir(tmp_path_factory.getbasetemp()), tmp_path / "daq")
    taken = [camera.readout(i) for i in range(2)]
    async with Client(running.ws_url, token=TOKENS["ocs"]) as ocs:
        for name in ("HeaderService", "Ingest", "SummitBuffer"):
            await ocs.set_state(name, State.ENABLED)
        events = await ocs.open_subscription(["Ingest"], ["imageIngested"], snapshot=False)
        await send_telemetry(ocs)
        for r in taken:
            p = r.payload
            await ocs.send_camera_event(
                "startIntegration", imageName=p["imageName"], visit=p["visit"], exposureTime=0.1
            )
            await ocs.send_camera_event("endReadout", **p)
        done: list[Any] = []
        await wait_for_event(events, lambda e: done.append(e) or len(done) == 8, 60)
        await events.aclose()
    assert all(e.data["statusCode"] == 0 and "merged" in e.data["description"] for e in done)
    raws = await registry_matches(pg_dsn, schema, taken)
    header = fits.getheader(raws[0].path)
    assert header["HDRSRC"] == "camera+headerService"
    assert header["AIRTEMP"] == pytest.approx(11.5)
    assert header["SEEING"] == pytest.approx(0.72)
