"""Validated settings of the components defined so far (frozen once loaded)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class Site(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    #: Cerro Pachón, the Rubin Observatory summit.
    name: str = "Cerro Pachon"
    latitude: float = Field(default=-30.244639, ge=-90, le=90)
    longitude: float = Field(default=-70.749417, ge=-180, le=180)
    height: float = 2663.0


class HeaderServiceSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    telescope: str = "Simonyi Survey Telescope"
    instrument: str = "LSSTCam"
    #: Camera readout time, seconds, added to the exposure time to expect ``endReadout``.
    readout_time: float = Field(default=2.0, ge=0)
    #: Seconds past the expected end of readout before a missing ``endReadout`` is given up.
    readout_timeout: float = Field(default=30.0, gt=0)
    site: Site = Site()


OVERRIDES_DIR = Path(__file__).resolve().parent / "overrides"
