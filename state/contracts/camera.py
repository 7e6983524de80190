"""Camera events (source ``Camera``, sent by the OCS through the gateway; docs/events.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .base import Contract
from .values import Dec, Degrees, Detector, Int64, Mjd, Name, NonNegInt, Ra, Seconds, TaiSeconds

Band = Literal["u", "g", "r", "i", "z", "y"]
ImageType = Literal["SCIENCE", "BIAS", "DARK", "FLAT", "ENGTEST"]
Detectors = Annotated[list[Detector], Field(max_length=10_000)]
Url = Annotated[str, Field(max_length=4096, strict=True)]


class NextVisit(Contract):
    topic = "nextVisit"
    visit: NonNegInt
    groupId: Name | None = None
    imageName: Name | None = None
    dayObs: Int64 | None = None
    seqNum: NonNegInt | None = None
    camera: Name | None = None
    band: Band | None = None
    ra: Ra | None = None
    dec: Dec | None = None
    rotSkyPos: Degrees | None = None
    exposureTime: Seconds | None = None
    startMjd: Mjd | None = None
    fieldId: Int64 | None = None
    observationId: Int64 | None = None
    detectors: Detectors | None = None


class StartIntegration(Contract):
    topic = "startIntegration"
    imageName: Name
    visit: NonNegInt | None = None
    dayObs: Int64 | None = None
    camera: Name | None = None
    band: Band | None = None
    exposureTime: Seconds | None = None
    shutterOpenTai: TaiSeconds | None = None
    imageType: ImageType | None = None


class EndIntegration(Contract):
    topic = "endIntegration"
    imageName: Name
    visit: NonNegInt | None = None
    shutterCloseTai: TaiSeconds | None = None


class ImageRef(Contract):
    detector: Detector
    url: Url
    checksum: Name
    byteSize: NonNegInt


class EndReadout(Contract):
    topic = "endReadout"
    imageName: Name | None = None
    visit: NonNegInt | None = None
    dayObs: Int64 | None = None
    camera: Name | None = None
    shutterCloseTai: TaiSeconds | None = None
    detectors: Detectors | None = None
    images: Annotated[list[ImageRef], Field(max_length=10_000)] | None = None


CAMERA_CONTRACTS: tuple[type[Contract], ...] = (
    NextVisit,
    StartIntegration,
    EndIntegration,
    EndReadout,
)
