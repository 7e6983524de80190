"""HeaderService through real Ray, a real gateway and the real client."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
from astropy.io import fits

from commands.client import Client
from commands.server import RunningSystem
from state.states import State
from tests.standard import StandardComponentTests, wait_for_event

TELEMETRY = {
    "pointing": {"ra": 150.1, "dec": -30.2, "alt": 60.0, "az": 120.0, "rotSkyPos": 12.5},
    "rotator": {"position": 3.25},
    "dome": {"azimuth": 121.0, "shutterOpen": True},
    "weather": {
        "temperature": 11.5,
        "pressure": 743.0,
        "humidity": 22.0,
        "windSpeed": 4.0,
        "windDirection": 270.0,
    },
    "seeing": {"fwhm": 0.72, "transparency": 0.95},
    "filter": {"band": "r", "name": "r_57"},
}


async def send_telemetry(client: Client) -> None:
    for topic, values in TELEMETRY.items():
        await client.send_telemetry(topic, **values)


class TestHeaderService(StandardComponentTests):
    component_class = "summit.header_service:HeaderService"
    name = "HeaderService"
    settings = {"readout_timeout": 1.0, "readout_time": 0.5}

    def headers_dir(self, running: RunningSystem) -> Path:
        return running.system.config.data_dir / self.name / "headers"

    async def cause_fault(self, running: RunningSystem, client: Client) -> None:
        target = self.headers_dir(running)
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("a file where the headers folder should be")
        await client.send_camera_event("startIntegration", imageName="FAULT_1", exposureTime=0.1)
        await client.send_camera_event("endReadout", imageName="FAULT_1")

    def repair_fault(self, running: RunningSystem) -> None:
        self.headers_dir(running).unlink()

    async def stimulate(self, running: RunningSystem, client: Client) -> None:
        await send_telemetry(client)
        await client.send_camera_event("startIntegration", imageName="SAFE_1", exposureTime=0.1)
        await client.send_camera_event("endReadout", imageName="SAFE_1")

    async def test_header_end_to_end(self, running: RunningSystem, ocs: Client) -> None:
        await ocs.set_state(self.name, State.ENABLED)
        events = await ocs.open_subscription(
            [self.name], ["largeFileObjectAvailable"], snapshot=False
        )
        await send_telemetry(ocs)
        await asyncio.sleep(0.3)
        await ocs.send_camera_event(
            "startIntegration", imageName="MC_O_20261121_000042", visit=42, exposureTime=0.3
        )
        await asyncio.sleep(0.3)
        await ocs.send_camera_event("endReadout", imageName="MC_O_20261121_000042", visit=42)
        lfo = await wait_for_event(events, lambda e: True)
        await events.aclose()

        path = Path(urlparse(lfo.data["url"]).path)
        payload = path.read_bytes()
        assert lfo.data["id"] == "MC_O_20261121_000042"
        assert lfo.data["mimeType"] == "application/fits"
        assert lfo.data["byteSize"] == len(payload)
        assert lfo.data["checksum"] == hashlib.sha256(payload).hexdigest()
        header = fits.getheader(path)
        assert header["OBSID"] == "MC_O_20261121_000042"
        assert header["VISIT"] == 42
        assert header["TIMESYS"] == "TAI"
        assert header["MJD-END"] > header["MJD-BEG"]
        assert header["EXPTIME"] == pytest.approx(0.3)
        assert header["RA"] == pytest.approx(150.1)
        assert header["DEC"] == pytest.approx(-30.2)
        assert header["ROTPA"] == pytest.approx(3.25)
        assert header["AMSTART"] == pytest.approx(1.1547, abs=2e-3)
        assert header["FILTBAND"] == "r"
        assert header["SEEING"] == pytest.approx(0.72)
        assert header["TRANSPAR"] == pytest.approx(0.95)
        assert header["AIRTEMP"] == pytest.approx(11.5)
        assert header["OBS-LAT"] == pytest.approx(-30.244639)
        assert header["DOMEAZ"] == pytest.approx(121.0)

    async def test_missing_end_readout_times_out_with_warning(
        self, running: RunningSystem, ocs: Client
    ) -> None:
        await ocs.set_state(self.name, State.ENABLED)
        events = await ocs.open_subscription(
            [self.name], ["logMessage", "largeFileObjectAvailable"]
        )
        await ocs.send_camera_event("startIntegration", imageName="LOST_1", exposureTime=0.2)
        warning = await wait_for_event(
            events, lambda e: e.topic == "logMessage" and "LOST_1" in e.data["message"]
        )
        await events.aclose()
        assert warning.data["level"] == 30
        assert "no endReadout" in warning.data["message"]
        assert not (self.headers_dir(running) / "LOST_1.fits").exists()

    async def test_end_readout_without_start_is_ignored_with_warning(self, ocs: Client) -> None:
        await ocs.set_state(self.name, State.ENABLED)
        events = await ocs.open_subscription([self.name], ["logMessage"], snapshot=False)
        await ocs.send_camera_event("endReadout", imageName="ORPHAN_1")
        warning = await wait_for_event(events, lambda e: "ORPHAN_1" in e.data["message"])
        await events.aclose()
        assert "without a startIntegration" in warning.data["message"]
        assert await ocs.get_state(self.name) == State.ENABLED

    async def test_configuration_override_is_applied(self, ocs: Client) -> None:
        events = await ocs.open_subscription([self.name], ["configurationApplied"], snapshot=False)
        await ocs.command(self.name, "start", configurationOverride="auxtel", timeout=10)
        applied = await wait_for_event(events, lambda e: True)
        await events.aclose()
        assert applied.data["configurations"] == "auxtel"
        status = {s["name"]: s for s in await ocs.status()}
        assert status[self.name]["configuration"] in ("auxtel", "default")
