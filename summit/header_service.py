"""HeaderService: writes the exposure header of every image from the telemetry it saw.

It listens to the OCS telemetry (pointing, rotator, dome, weather, seeing, filter) and the
camera events. ``startIntegration`` snapshots the telemetry; ``endReadout`` turns that
snapshot into a FITS header with the metadata of DMS-REQ-0068, writes it durably with a
checksum and announces it with ``largeFileObjectAvailable``. It acts only when ENABLED.
"""

from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import dataclass
from typing import Any

from astropy.io import fits

from config.components import HeaderServiceSettings
from state.controller import Controller
from state.durable import sha256_hex, write_durably
from state.errors import StorageError
from state.events import CAMERA_EVENTS, OCS_TELEMETRY, Event
from state.states import State
from summit.header_cards import exposure_cards

#: errorCode published when a header cannot be written.
HEADER_WRITE_FAILED = 100


@dataclass(slots=True)
class _Exposure:
    image_name: str
    start_tai: float
    start_data: dict[str, Any]
    telemetry: dict[str, dict[str, Any]]
    timeout: asyncio.TimerHandle


class HeaderService(Controller):
    event_topics = ("largeFileObjectAvailable",)
    listen_components = ("OCS", "Camera")
    listen_topics = tuple(sorted(OCS_TELEMETRY | CAMERA_EVENTS))
    settings_model = HeaderServiceSettings
    config: HeaderServiceSettings

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self._telemetry: dict[str, dict[str, Any]] = {}
        self._exposures: dict[str, _Exposure] = {}
        self.headers_written = 0

    async def handle_summary_state(self) -> None:
        if self.summary_state != State.ENABLED:
            for exposure in self._exposures.values():
                exposure.timeout.cancel()
            self._exposures.clear()

    async def on_event(self, event: Event) -> None:
        if event.topic in OCS_TELEMETRY:
            self._telemetry[event.topic] = {**event.data, "_tai": event.tai}
            return
        if self.summary_state != State.ENABLED:
            return
        image_name = str(event.data.get("imageName", ""))
        if not image_name:
            self.log_message(logging.WARNING, f"{event.topic} without an imageName; ignored")
            return
        if event.topic == "startIntegration":
            self._start_exposure(image_name, event)
        elif event.topic == "endReadout":
            await self._end_readout(image_name, event)

    def _start_exposure(self, image_name: str, event: Event) -> None:
        if image_name in self._exposures:
            self.log_message(logging.WARNING, f"repeated startIntegration for {image_name}")
            self._exposures.pop(image_name).timeout.cancel()
        exposure_time = float(event.data.get("exposureTime", 0.0))
        wait = exposure_time + self.config.readout_time + self.config.readout_timeout
        timeout = asyncio.get_running_loop().call_later(wait, self._give_up, image_name, wait)
        self._exposures[image_name] = _Exposure(
            image_name, event.tai, dict(event.data), dict(self._telemetry), timeout
        )

    def _give_up(self, image_name: str, waited: float) -> None:
        if self._exposures.pop(image_name, None) is not None:
            self.log_message(
                logging.WARNING,
                f"no endReadout for {image_name} within {waited:.1f} s of startIntegration; "
                "no header written",
                imageName=image_name,
            )

    async def _end_readout(self, image_name: str, event: Event) -> None:
        exposure = self._exposures.pop(image_name, None)
        if exposure is None:
            self.log_message(
                logging.WARNING, f"endReadout for {image_name} without a startIntegration; ignored"
            )
            return
        exposure.timeout.cancel()
        header = fits.Header(
            exposure_cards(
                image_name=image_name,
                start_tai=exposure.start_tai,
                start=exposure.start_data,
                end_tai=event.tai,
                end=event.data,
                telemetry=exposure.telemetry,
                settings=self.config,
            )
        )
        buffer = io.BytesIO()
        fits.PrimaryHDU(header=header).writeto(buffer)
        payload = buffer.getvalue()
        path = self.data_dir.absolute() / "headers" / f"{image_name}.fits"
        try:
            await asyncio.to_thread(write_durably, path, payload)
        except OSError as e:
            error = StorageError(f"cannot write the header of {image_name} to {path}: {e}")
            await self.fault(HEADER_WRITE_FAILED, str(error))
            return
        self.headers_written += 1
        self.publish(
            "largeFileObjectAvailable",
            {
                "url": path.as_uri(),
                "checksum": sha256_hex(payload),
                "checksumAlgorithm": "sha256",
                "byteSize": len(payload),
                "mimeType": "application/fits",
                "id": image_name,
                "generator": self.name,
                "version": self.version,
            },
        )
