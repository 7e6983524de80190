"""OCS telemetry (source ``OCS``) and batch reprocessing telemetry (source ``Reprocess``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from .base import Contract
from .camera import Band
from .values import Dec, Degrees, Finite, Fraction, Int64, Mjd, Name, NonNegInt, Ra, Seconds, Text

Altitude = Annotated[float, Field(ge=-90.0, le=90.0, allow_inf_nan=False, strict=True)]


class Pointing(Contract):
    topic = "pointing"
    ra: Ra | None = None
    dec: Dec | None = None
    rotSkyPos: Degrees | None = None
    alt: Altitude | None = None
    az: Degrees | None = None
    airmass: Annotated[float, Field(ge=0.0, le=1000.0, allow_inf_nan=False)] | None = None
    tracking: bool | None = None


class Rotator(Contract):
    topic = "rotator"
    position: Degrees | None = None


class Filter(Contract):
    topic = "filter"
    band: Band | None = None
    name: Name | None = None


class Seeing(Contract):
    topic = "seeing"
    fwhm: Annotated[float, Field(ge=0.0, le=100.0, allow_inf_nan=False)] | None = None
    transparency: Fraction | None = None


class Weather(Contract):
    topic = "weather"
    temperature: Annotated[float, Field(ge=-100.0, le=100.0, allow_inf_nan=False)] | None = None
    pressure: Annotated[float, Field(ge=0.0, le=2000.0, allow_inf_nan=False)] | None = None
    humidity: Annotated[float, Field(ge=0.0, le=100.0, allow_inf_nan=False)] | None = None
    windSpeed: Annotated[float, Field(ge=0.0, le=500.0, allow_inf_nan=False)] | None = None
    windDirection: Degrees | None = None


class Dome(Contract):
    topic = "dome"
    azimuth: Degrees | None = None
    shutterOpen: bool | None = None


class ScheduledVisit(Contract):
    visit: NonNegInt
    startMjd: Mjd
    ra: Ra | None = None
    dec: Dec | None = None
    band: Band | None = None
    exposureTime: Seconds | None = None
    fieldId: Int64 | None = None


class PredictedSchedule(Contract):
    topic = "predictedSchedule"
    visits: Annotated[list[ScheduledVisit], Field(max_length=100_000)]


Unit = Annotated[
    str,
    StringConstraints(
        pattern=r"^(ccd:[0-9]+/[0-9]+|region:.+|characterize)$", max_length=128, strict=True
    ),
]
ReprocessMode = Literal["release", "catchUp"]
ReprocessPhase = Literal["ccd", "region", "characterize"]
ReprocessStatus = Literal["running", "done", "failed", "interrupted"]


class ReprocessProgress(Contract):
    topic = "reprocessProgress"
    run: Name
    mode: ReprocessMode | None = None
    phase: ReprocessPhase | None = None
    done: NonNegInt | None = None
    total: NonNegInt | None = None
    failed: NonNegInt | None = None
    ratePerSecond: Finite | None = None
    etaSeconds: Finite | None = None
    status: ReprocessStatus | None = None
    startedTai: Finite | None = None
    workers: NonNegInt | None = None


class ReprocessFailure(Contract):
    topic = "reprocessFailure"
    run: Name
    unit: Unit | None = None
    reason: Text | None = None
    attempt: NonNegInt | None = None
    final: bool | None = None


OCS_CONTRACTS: tuple[type[Contract], ...] = (
    Pointing,
    Rotator,
    Filter,
    Seeing,
    Weather,
    Dome,
    PredictedSchedule,
)
REPROCESS_CONTRACTS: tuple[type[Contract], ...] = (ReprocessProgress, ReprocessFailure)
