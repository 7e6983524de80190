"""The exposure header cards of DMS-REQ-0068, from camera events and a telemetry snapshot."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from algorithms.airmass import airmass_kasten_young
from config.components import HeaderServiceSettings
from state.clock import tai_mjd

Card = tuple[str, Any, str]

#: MJD of the Unix epoch; TAI seconds since then map to MJD(TAI) without leap-second tables.


def tai_isot(tai: float) -> str:
    """TAI seconds (Unix-epoch based) as an ISO-8601 TAI calendar string."""
    return datetime.fromtimestamp(tai, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def _number(source: dict[str, Any], key: str) -> float | None:
    value = source.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _airmass(pointing: dict[str, Any]) -> float | None:
    given = _number(pointing, "airmass")
    if given is not None:
        return given
    alt = _number(pointing, "alt")
    if alt is None or not 0 <= alt <= 90:
        return None
    return round(float(airmass_kasten_young(alt)), 5)


def exposure_cards(
    *,
    image_name: str,
    start_tai: float,
    start: dict[str, Any],
    end_tai: float,
    end: dict[str, Any],
    telemetry: dict[str, dict[str, Any]],
    settings: HeaderServiceSettings,
) -> list[Card]:
    """Header cards for one exposure. Unknown telemetry values are left out, not invented."""
    exposure_time = _number(start, "exposureTime") or 0.0
    open_tai = _number(start, "shutterOpenTai") or start_tai
    close_tai = _number(end, "shutterCloseTai") or open_tai + exposure_time
    pointing = telemetry.get("pointing", {})
    site = settings.site
    cards: list[Card] = [
        ("TELESCOP", settings.telescope, "telescope"),
        ("INSTRUME", settings.instrument, "camera"),
        ("OBSID", image_name, "image name"),
        ("IMGTYPE", str(start.get("imageType", "SCIENCE")), "image type"),
        ("VISIT", start.get("visit"), "visit id"),
        ("TIMESYS", "TAI", "time scale of all dates"),
        ("DATE-BEG", tai_isot(open_tai), "shutter open, TAI"),
        ("DATE-END", tai_isot(close_tai), "shutter close, TAI"),
        ("MJD-BEG", round(tai_mjd(open_tai), 8), "shutter open, MJD(TAI)"),
        ("MJD-END", round(tai_mjd(close_tai), 8), "shutter close, MJD(TAI)"),
        ("EXPTIME", exposure_time, "requested exposure time, s"),
        ("SHUTTIME", round(close_tai - open_tai, 4), "shutter open duration, s"),
        ("DARKTIME", round(end_tai - start_tai, 4), "integration to end of readout, s"),
        ("OBS-LAT", site.latitude, "observatory latitude, deg"),
        ("OBS-LONG", site.longitude, "observatory longitude, deg east"),
        ("OBS-ELEV", site.height, "observatory height, m"),
        ("OBSERVAT", site.name, "observatory site"),
        ("RA", _number(pointing, "ra"), "telescope pointing RA (ICRS), deg"),
        ("DEC", _number(pointing, "dec"), "telescope pointing Dec (ICRS), deg"),
        ("ROTPA", _number(telemetry.get("rotator", {}), "position"), "rotator angle, deg"),
        ("ROTSKYPA", _number(pointing, "rotSkyPos"), "sky position angle, deg"),
        ("ALTSTART", _number(pointing, "alt"), "altitude at start, deg"),
        ("AZSTART", _number(pointing, "az"), "azimuth at start, deg"),
        ("AMSTART", _airmass(pointing), "airmass at start"),
        ("FILTBAND", telemetry.get("filter", {}).get("band"), "filter band"),
        ("FILTER", telemetry.get("filter", {}).get("name"), "filter name"),
        ("SEEING", _number(telemetry.get("seeing", {}), "fwhm"), "site seeing FWHM, arcsec"),
        ("TRANSPAR", _number(telemetry.get("seeing", {}), "transparency"), "transparency"),
        ("AIRTEMP", _number(telemetry.get("weather", {}), "temperature"), "air temp, C"),
        ("PRESSURE", _number(telemetry.get("weather", {}), "pressure"), "pressure, hPa"),
        ("HUMIDITY", _number(telemetry.get("weather", {}), "humidity"), "humidity, %"),
        ("WINDSPD", _number(telemetry.get("weather", {}), "windSpeed"), "wind speed, m/s"),
        ("WINDDIR", _number(telemetry.get("weather", {}), "windDirection"), "wind dir, deg"),
        ("DOMEAZ", _number(telemetry.get("dome", {}), "azimuth"), "dome azimuth, deg"),
    ]
    return [card for card in cards if card[1] is not None]
