"""The timed sequence of camera events and OCS telemetry of a night, as a pure generator.

Payloads follow docs/events.md (camelCase). First a ``predictedSchedule``; then for each visit:
``nextVisit`` (``lead_s`` >= 20 s before the shutter opens), the telescope settling on the
field (``pointing``, ``rotator``, ``filter``, ``dome``) ``settle_s`` before it, then
``startIntegration``, ``endIntegration`` after the exposure and ``endReadout`` after the
readout; and steady telemetry (pointing, weather, seeing, dome) every ``telemetry_s`` seconds
of simulated time. Each event carries its simulated TAI (MJD) and the wall-clock offset at which
a driver should send it: ``(tai - t0) / speed`` seconds (speed 1 = real time).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from config.cameras import Camera
from state.clock import mjd_tai
from state.errors import InvalidInputError
from summit.raw_headers import iso_tai, obs_id
from summit.schedule import Visit, airmass, alt_az_pa

NightEventKind = Literal["camera", "telemetry"]

#: MJD of the Unix epoch: TAI seconds since it map to MJD(TAI) without leap-second tables.
#: Rubin's LSSTCam filter names per band.
FILTER_NAMES = {"u": "u_24", "g": "g_6", "r": "r_57", "i": "i_39", "z": "z_20", "y": "y_10"}


@dataclass(frozen=True)
class NightEvent:
    kind: NightEventKind  # camera event or OCS telemetry
    name: str  # the topic: nextVisit ... endReadout, or pointing, weather ...
    tai_mjd: float
    wall_s: float  # seconds after the start of the replay at which to send it
    payload: dict[str, Any]


def image_name(camera: Camera, v: Visit) -> str:
    return obs_id(camera, v)


def predicted_schedule(visits: Sequence[Visit]) -> dict[str, Any]:
    """The ``predictedSchedule`` payload (DMS-REQ-0353)."""
    return {
        "visits": [
            {
                "visit": v.visit_id,
                "startMjd": v.mjd_start,
                "ra": v.ra,
                "dec": v.dec,
                "band": v.band,
                "exposureTime": v.exptime,
                "fieldId": v.field_id,
            }
            for v in visits
        ]
    }


def _pointing(v: Visit, mjd: float) -> dict[str, Any]:
    alt, az, _ = alt_az_pa(v.ra, v.dec, mjd)
    return {
        "ra": v.ra,
        "dec": v.dec,
        "rotSkyPos": v.rot_sky_pos,
        "alt": alt,
        "az": az,
        "airmass": airmass(alt) if alt > 0 else None,
        "tracking": True,
    }


Item = tuple[float, NightEventKind, str, dict[str, Any]]


def _visit_events(camera: Camera, v: Visit, lead_s: float, settle_s: float) -> list[Item]:
    name = image_name(camera, v)
    common = {"imageName": name, "visit": v.visit_id}
    day = {"dayObs": v.day_obs, "camera": camera.name}
    detectors = [d.id for d in camera.detectors]
    end = v.mjd_start + v.exptime / 86400.0
    settle = v.mjd_start - settle_s / 86400.0
    pointing = _pointing(v, v.mjd_start)
    return [
        (
            v.mjd_start - lead_s / 86400.0,
            "camera",
            "nextVisit",
            {
                "groupId": iso_tai(v.mjd_start),
                **common,
                **day,
                "seqNum": v.visit_id % 100000,
                "band": v.band,
                "ra": v.ra,
                "dec": v.dec,
                "rotSkyPos": v.rot_sky_pos,
                "exposureTime": v.exptime,
                "startMjd": v.mjd_start,
                "fieldId": v.field_id,
                "observationId": v.observation_id,
                "detectors": detectors,
            },
        ),
        (settle, "telemetry", "filter", {"band": v.band, "name": FILTER_NAMES[v.band]}),
        (settle, "telemetry", "rotator", {"position": v.rot_sky_pos}),
        (settle, "telemetry", "pointing", pointing),
        (settle, "telemetry", "dome", {"azimuth": pointing["az"], "shutterOpen": True}),
        (
            v.mjd_start,
            "camera",
            "startIntegration",
            {
                **common,
                **day,
                "band": v.band,
                "exposureTime": v.exptime,
                "shutterOpenTai": mjd_tai(v.mjd_start),
                "imageType": "SCIENCE",
            },
        ),
        (end, "camera", "endIntegration", {**common, "shutterCloseTai": mjd_tai(end)}),
        (
            end + camera.readout_time_s / 86400.0,
            "camera",
            "endReadout",
            {**common, **day, "shutterCloseTai": mjd_tai(end), "detectors": detectors},
        ),
    ]


def _steady_telemetry(
    visits: Sequence[Visit], t0: float, t_end: float, telemetry_s: float, settle_s: float, seed: int
) -> list[Item]:
    rng = np.random.default_rng([seed, 4242])
    temp, wind, wind_dir = 12.0, 5.0, 300.0
    items: list[Item] = []
    vi = 0
    for k in range(math.floor((t_end - t0) * 86400.0 / telemetry_s) + 1):
        t = t0 + k * telemetry_s / 86400.0
        while vi + 1 < len(visits) and visits[vi + 1].mjd_start - settle_s / 86400.0 <= t:
            vi += 1
        v = visits[vi]
        pointing = _pointing(v, t)
        temp += rng.normal(0.0, 0.02)
        wind = max(0.0, wind + rng.normal(0.0, 0.2))
        wind_dir = (wind_dir + rng.normal(0.0, 2.0)) % 360.0
        weather = {
            "temperature": temp,
            "pressure": 745.0 + rng.normal(0.0, 0.05),
            "humidity": 25.0 + rng.normal(0.0, 0.5),
            "windSpeed": wind,
            "windDirection": wind_dir,
        }
        seeing = {
            "fwhm": v.seeing_eff * math.exp(rng.normal(0.0, 0.05)),
            "transparency": float(np.clip(0.97 + rng.normal(0.0, 0.01), 0.0, 1.0)),
        }
        items.append((t, "telemetry", "pointing", pointing))
        items.append((t, "telemetry", "weather", weather))
        items.append((t, "telemetry", "seeing", seeing))
        items.append((t, "telemetry", "dome", {"azimuth": pointing["az"], "shutterOpen": True}))
    return items


def night_events(
    camera: Camera,
    visits: Sequence[Visit],
    *,
    speed: float = 1.0,
    lead_s: float = 20.0,
    telemetry_s: float = 10.0,
    settle_s: float = 1.0,
    seed: int = 0,
) -> Iterator[NightEvent]:
    """Every event of the night in time order (ties: the order they were made)."""
    if not visits:
        raise InvalidInputError("the schedule holds no visits")
    if not (speed > 0 and lead_s >= 20.0 and telemetry_s > 0 and 0 < settle_s < lead_s):
        raise InvalidInputError(
            "need speed > 0, lead_s >= 20, telemetry_s > 0 and 0 < settle_s < lead_s"
        )
    made: list[Item] = []
    for v in visits:
        made.extend(_visit_events(camera, v, lead_s, settle_s))
    t0 = min(i[0] for i in made)
    made.insert(0, (t0, "telemetry", "predictedSchedule", predicted_schedule(visits)))
    made.extend(_steady_telemetry(visits, t0, max(i[0] for i in made), telemetry_s, settle_s, seed))
    heap = [(t, order, kind, name, payload) for order, (t, kind, name, payload) in enumerate(made)]
    heapq.heapify(heap)
    while heap:
        t, _, kind, name, payload = heapq.heappop(heap)
        yield NightEvent(kind, name, t, (t - t0) * 86400.0 / speed, payload)
