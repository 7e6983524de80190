"""The timed sequence of camera events and telemetry of a night, as a pure generator.

For each visit: ``nextVisit`` (``lead_s`` >= 20 s before the exposure starts),
``startIntegration`` at the start, ``endIntegration`` after the exposure, ``endReadout``
after the readout; and telemetry (pointing, weather, seeing, dome) every ``telemetry_s``
seconds of simulated time. Each event carries the simulated TAI (MJD) and the wall-clock
offset at which a driver should send it: ``(tai - t0) / speed`` seconds (speed 1 = real time).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from config.cameras import Camera
from state.errors import InvalidInputError
from summit.schedule import Visit, alt_az_pa


@dataclass(frozen=True)
class NightEvent:
    name: str  # nextVisit | startIntegration | endIntegration | endReadout | telemetry
    tai_mjd: float
    wall_s: float  # seconds after the start of the replay at which to send it
    payload: dict[str, Any]


def _visit_events(
    camera: Camera, v: Visit, lead_s: float
) -> list[tuple[float, str, dict[str, Any]]]:
    base = {
        "visit": v.visit_id,
        "day_obs": v.day_obs,
        "observation_id": v.observation_id,
        "band": v.band,
        "camera": camera.name,
    }
    end = v.mjd_start + v.exptime / 86400.0
    detectors = [d.id for d in camera.detectors]
    return [
        (
            v.mjd_start - lead_s / 86400.0,
            "nextVisit",
            {
                **base,
                "ra": v.ra,
                "dec": v.dec,
                "rot_sky_pos": v.rot_sky_pos,
                "exptime": v.exptime,
                "start_mjd": v.mjd_start,
                "detectors": detectors,
                "field_id": v.field_id,
            },
        ),
        (v.mjd_start, "startIntegration", {**base, "exptime": v.exptime}),
        (end, "endIntegration", dict(base)),
        (end + camera.readout_time_s / 86400.0, "endReadout", {**base, "detectors": detectors}),
    ]


def night_events(
    camera: Camera,
    visits: tuple[Visit, ...] | list[Visit],
    *,
    speed: float = 1.0,
    lead_s: float = 20.0,
    telemetry_s: float = 10.0,
    seed: int = 0,
) -> Iterator[NightEvent]:
    """Every event of the night in time order (ties: the order they were made)."""
    if not visits:
        raise InvalidInputError("the schedule holds no visits")
    if speed <= 0 or lead_s < 20.0 or telemetry_s <= 0:
        raise InvalidInputError("need speed > 0, lead_s >= 20 and telemetry_s > 0")
    items: list[tuple[float, int, str, dict[str, Any]]] = []
    order = 0
    for v in visits:
        for t, name, payload in _visit_events(camera, v, lead_s):
            items.append((t, order, name, payload))
            order += 1
    t0 = min(i[0] for i in items)
    t_end = max(i[0] for i in items)
    rng = np.random.default_rng([seed, 4242])
    n_tel = math.floor((t_end - t0) * 86400.0 / telemetry_s) + 1
    temp, wind = 12.0, 5.0
    vi = 0
    for k in range(n_tel):
        t = t0 + k * telemetry_s / 86400.0
        while vi + 1 < len(visits) and visits[vi + 1].mjd_start <= t:
            vi += 1
        v = visits[vi]
        alt, az, _ = alt_az_pa(v.ra, v.dec, t)
        temp += rng.normal(0.0, 0.02)
        wind = max(0.0, wind + rng.normal(0.0, 0.2))
        payload = {
            "pointing": {
                "ra": v.ra,
                "dec": v.dec,
                "rot_sky_pos": v.rot_sky_pos,
                "altitude": alt,
                "azimuth": az,
                "tracking": True,
            },
            "weather": {
                "temperature_c": temp,
                "wind_speed_m_s": wind,
                "humidity_pct": 25.0 + rng.normal(0, 0.5),
                "pressure_hpa": 745.0,
            },
            "seeing": {"fwhm_arcsec": v.seeing_eff * math.exp(rng.normal(0, 0.05))},
            "dome": {"azimuth": az, "shutter_open": True},
        }
        items.append((t, order, "telemetry", payload))
        order += 1
    heapq.heapify(items)
    while items:
        t, _, name, payload = heapq.heappop(items)
        yield NightEvent(name, t, (t - t0) * 86400.0 / speed, payload)
