"""Night schedules in the OpSim ``observations`` schema: generate, write and read (replay).

A generated night observes blocks of fields near the meridian from Cerro Pachon, each block
visited twice (pairs about 15-25 min apart) in one band, with seeing, sky brightness, airmass,
parallactic angle and five-sigma depth computed as OpSim does (Ivezic et al. 2019). Any OpSim
database (``observations`` table; ``band`` or the older ``filter`` column) is read the same way.
Times are MJD (TAI); ``visit_id`` is ``day_obs * 100000 + seq`` as Rubin numbers exposures.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from config.cameras import BANDS, Camera
from state.errors import InvalidInputError, StorageError

SITE_LAT_DEG = -30.2444
SITE_LON_DEG = -70.7494
BAND_WAVELENGTH_NM = {"u": 367.0, "g": 482.0, "r": 622.0, "i": 755.0, "z": 869.0, "y": 971.0}
M5_CM = {"u": 23.02, "g": 24.60, "r": 24.61, "i": 24.49, "z": 24.35, "y": 23.86}
REQUIRED = (
    "observationId",
    "observationStartMJD",
    "fieldRA",
    "fieldDec",
    "visitExposureTime",
    "airmass",
    "seeingFwhmEff",
    "skyBrightness",
    "rotSkyPos",
)


@dataclass(frozen=True)
class Visit:
    """One row of the ``observations`` table (OpSim column names in the comments)."""

    observation_id: int  # observationId
    mjd_start: float  # observationStartMJD (TAI)
    ra: float  # fieldRA, deg
    dec: float  # fieldDec, deg
    band: str  # band (filter)
    exptime: float  # visitExposureTime, s
    airmass: float
    seeing_eff: float  # seeingFwhmEff, arcsec
    seeing_geom: float  # seeingFwhmGeom, arcsec (Moffat FWHM used to render)
    sky_brightness: float  # skyBrightness, mag/arcsec^2
    rot_sky_pos: float  # rotSkyPos, deg
    visit_time: float  # visitTime, s (exposure + shutter)
    field_id: int  # identical (fieldRA, fieldDec) share it
    visit_id: int  # day_obs * 100000 + seq
    day_obs: int

    @property
    def mjd_mid(self) -> float:
        return self.mjd_start + 0.5 * self.exptime / 86400.0


def day_obs(mjd: float) -> int:
    """Rubin's observing day: the calendar date at UTC-12h."""
    d = datetime(1858, 11, 17) + timedelta(days=mjd - 0.5)
    return d.year * 10000 + d.month * 100 + d.day


def lst_deg(mjd: float) -> float:
    """Local sidereal time at the site (IAU 1982 GMST; UT1 ~ TAI to 40 s)."""
    return (280.46061837 + 360.98564736629 * (mjd - 51544.5) + SITE_LON_DEG) % 360.0


def alt_az_pa(ra: float, dec: float, mjd: float) -> tuple[float, float, float]:
    """(altitude, azimuth, parallactic angle) in degrees."""
    h = math.radians(lst_deg(mjd) - ra)
    d, p = math.radians(dec), math.radians(SITE_LAT_DEG)
    alt = math.asin(math.sin(d) * math.sin(p) + math.cos(d) * math.cos(p) * math.cos(h))
    az = math.atan2(
        -math.sin(h) * math.cos(d),
        math.sin(d) * math.cos(p) - math.cos(d) * math.cos(h) * math.sin(p),
    )
    pa = math.atan2(math.sin(h), math.tan(p) * math.cos(d) - math.sin(d) * math.cos(h))
    return math.degrees(alt), math.degrees(az) % 360.0, math.degrees(pa)


def airmass(alt_deg: float) -> float:
    """Kasten & Young (1989)."""
    x = 1.0 / (math.sin(math.radians(alt_deg)) + 0.50572 * (alt_deg + 6.07995) ** -1.6364)
    return max(x, 1.0)


def seeing(seeing500: float, band: str, x: float) -> tuple[float, float]:
    """(FWHMeff, FWHMgeom) in arcsec, the OpSim model."""
    atm = seeing500 * x**0.6 * (BAND_WAVELENGTH_NM[band] / 500.0) ** -0.3
    eff = 1.16 * math.sqrt((0.4 * x**0.6) ** 2 + 1.04 * atm**2)
    return eff, 0.822 * eff + 0.052


def generate_schedule(
    camera: Camera, n_visits: int, seed: int, night_mjd: int = 60800, exptime: float = 30.0
) -> list[Visit]:
    """A night of ``n_visits`` visits, fields revisited in pairs (``n_visits`` must be >= 2)."""
    if n_visits < 2:
        raise InvalidInputError(f"a night needs at least 2 visits (pairs), not {n_visits}")
    rng = np.random.default_rng([seed, 7919])
    spacing = 1.7 * camera.field_radius_deg
    t = night_mjd + 0.98  # ~20:30 local, astronomical twilight over
    seeing500 = float(rng.lognormal(math.log(0.62), 0.2))
    visits: list[Visit] = []
    fields: dict[tuple[float, float], int] = {}
    seq = 0
    while len(visits) < n_visits:
        remaining = n_visits - len(visits)
        n_fields = min(max(remaining // 2, 1), 30)
        band = str(rng.choice(list(BANDS), p=[0.05, 0.15, 0.25, 0.25, 0.2, 0.1]))
        ra_c = (lst_deg(t) + rng.uniform(0.0, 15.0)) % 360.0
        dec_c = float(rng.uniform(-55.0, -15.0))
        ncol = math.ceil(math.sqrt(n_fields))
        block = []
        for k in range(n_fields):
            row, col = divmod(k, ncol)
            dec = dec_c + (row - ncol / 2) * spacing * 0.87
            ra = (
                ra_c + (col - ncol / 2 + 0.5 * (row % 2)) * spacing / math.cos(math.radians(dec))
            ) % 360.0
            block.append((round(ra, 6), round(dec, 6)))
        rot_by_field: dict[tuple[float, float], float] = {}
        for _pass in range(2):
            for ra, dec in block:
                if len(visits) >= n_visits:
                    break
                alt, _, pa = alt_az_pa(ra, dec, t)
                x = airmass(alt)
                seeing500 = float(np.clip(seeing500 * math.exp(rng.normal(0.0, 0.03)), 0.4, 1.5))
                eff, geom = seeing(seeing500, band, x)
                rot = rot_by_field.setdefault((ra, dec), (pa + rng.uniform(-10, 10)) % 360.0)
                sky = camera.photometry.dark_sky[band] - 0.3 * (x - 1.0) - rng.uniform(0.0, 0.4)
                fid = fields.setdefault((ra, dec), len(fields))
                seq += 1
                visits.append(
                    Visit(
                        len(visits),
                        t,
                        ra,
                        dec,
                        band,
                        exptime,
                        x,
                        eff,
                        geom,
                        sky,
                        rot,
                        exptime + 1.0,
                        fid,
                        day_obs(night_mjd + 1.0) * 100000 + seq,
                        day_obs(night_mjd + 1.0),
                    )
                )
                t += (exptime + 1.0 + max(2.0, 4.0 + 0.5 * spacing)) / 86400.0
            t += 8.0 / 86400.0  # slew back to the first field of the block
    return visits


def _row(v: Visit, prev: Visit | None) -> dict[str, object]:
    alt, az, pa = alt_az_pa(v.ra, v.dec, v.mjd_start)
    m5 = (
        M5_CM[v.band]
        + 0.5 * (v.sky_brightness - 21.0)
        + 2.5 * math.log10(0.7 / v.seeing_eff)
        + 1.25 * math.log10(v.exptime / 30.0)
        - 0.1 * (v.airmass - 1.0)
    )
    slew = 0.0 if prev is None else (v.mjd_start - prev.mjd_start) * 86400.0 - prev.visit_time
    return {
        "observationId": v.observation_id,
        "fieldRA": v.ra,
        "fieldDec": v.dec,
        "observationStartMJD": v.mjd_start,
        "flush_by_mjd": v.mjd_start + 0.1,
        "visitExposureTime": v.exptime,
        "band": v.band,
        "filter": v.band,
        "rotSkyPos": v.rot_sky_pos,
        "rotSkyPos_desired": v.rot_sky_pos,
        "rotTelPos": ((pa - v.rot_sky_pos + 180.0) % 360.0) - 180.0,
        "numExposures": 1,
        "airmass": v.airmass,
        "seeingFwhm500": v.seeing_eff / 1.3,
        "seeingFwhmEff": v.seeing_eff,
        "seeingFwhmGeom": v.seeing_geom,
        "skyBrightness": v.sky_brightness,
        "night": 1,
        "slewTime": slew,
        "visitTime": v.visit_time,
        "slewDistance": 0.0,
        "fiveSigmaDepth": m5,
        "altitude": alt,
        "azimuth": az,
        "paraAngle": pa,
        "cloud": 0.0,
        "observationStartLST": lst_deg(v.mjd_start),
        "moonAlt": -10.0,
        "sunAlt": -20.0,
        "note": "pair",
        "target": f"field{v.field_id:04d}",
        "scheduler_note": "pair",
        "day_obs": v.day_obs,
    }


def write_schedule(visits: list[Visit] | tuple[Visit, ...], path: Path) -> None:
    """Write ``visits`` as an OpSim ``observations`` table in a new SQLite file."""
    rows = [_row(v, visits[i - 1] if i else None) for i, v in enumerate(visits)]
    if not rows:
        raise InvalidInputError("refusing to write an empty schedule")
    cols = list(rows[0])
    try:
        path.unlink(missing_ok=True)
        with sqlite3.connect(path) as db:
            db.execute(f"CREATE TABLE observations ({', '.join(cols)})")
            db.executemany(
                f"INSERT INTO observations VALUES ({', '.join('?' * len(cols))})",
                [tuple(r.values()) for r in rows],
            )
        db.close()
    except (OSError, sqlite3.Error) as e:
        raise StorageError(f"cannot write schedule {path}: {e}") from e


def read_schedule(path: Path, limit: int | None = None) -> tuple[Visit, ...]:
    """Read and check an OpSim SQLite schedule (first ``limit`` visits by start time)."""
    if not Path(path).is_file():
        raise InvalidInputError(f"schedule {path} does not exist")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            db.row_factory = sqlite3.Row
            cols = {r[1] for r in db.execute("PRAGMA table_info(observations)")}
            if not cols:
                raise InvalidInputError(f"schedule {path} has no 'observations' table")
            missing = [c for c in REQUIRED if c not in cols]
            band_col = "band" if "band" in cols else "filter" if "filter" in cols else None
            if missing or band_col is None:
                need = ", ".join(missing + ([] if band_col else ["band"]))
                raise InvalidInputError(f"schedule {path} lacks OpSim columns: {need}")
            sql = f"SELECT *, {band_col} AS band_ FROM observations ORDER BY observationStartMJD"
            rows = db.execute(sql + (f" LIMIT {int(limit)}" if limit else "")).fetchall()
        db.close()
    except sqlite3.Error as e:
        raise InvalidInputError(f"schedule {path} is not a readable SQLite file: {e}") from e
    if not rows:
        raise InvalidInputError(f"schedule {path} is empty")
    return _to_visits(rows, cols, path)


def _to_visits(rows: list[sqlite3.Row], cols: set[str], path: Path) -> tuple[Visit, ...]:
    visits: list[Visit] = []
    fields: dict[tuple[float, float], int] = {}
    seq_by_day: dict[int, int] = {}
    for r in rows:
        oid, band = int(r["observationId"]), str(r["band_"]).strip()
        where = f"schedule {path}, observationId {oid}"
        exptime, x = float(r["visitExposureTime"]), float(r["airmass"])
        ra, dec, eff = float(r["fieldRA"]), float(r["fieldDec"]), float(r["seeingFwhmEff"])
        if band not in BANDS:
            raise InvalidInputError(f"{where}: unknown band {band!r}")
        if not (-90.0 <= dec <= 90.0 and 0.0 <= ra < 360.0):
            raise InvalidInputError(f"{where}: pointing ({ra}, {dec}) out of range")
        if not (exptime > 0 and x >= 0.99 and eff > 0):
            raise InvalidInputError(f"{where}: needs exposure > 0, airmass >= 1, seeing > 0")
        start = float(r["observationStartMJD"])
        visit_time = float(r["visitTime"]) if "visitTime" in cols else exptime
        if visits:
            prev = visits[-1]
            if prev.observation_id == oid:
                raise InvalidInputError(f"{where}: duplicate observationId")
            if (start - prev.mjd_start) * 86400.0 < prev.exptime - 1e-3:
                raise InvalidInputError(
                    f"{where}: starts before the previous visit's exposure has ended"
                )
        geom = float(r["seeingFwhmGeom"]) if "seeingFwhmGeom" in cols else 0.822 * eff + 0.052
        dobs = day_obs(start)
        seq_by_day[dobs] = seq_by_day.get(dobs, 0) + 1
        fid = fields.setdefault((round(ra, 4), round(dec, 4)), len(fields))
        visits.append(
            Visit(
                oid,
                start,
                ra,
                dec,
                band,
                exptime,
                x,
                eff,
                geom,
                float(r["skyBrightness"]),
                float(r["rotSkyPos"]) % 360.0,
                visit_time,
                fid,
                dobs * 100000 + seq_by_day[dobs],
                dobs,
            )
        )
    return tuple(visits)


def visit_as_dict(v: Visit) -> dict[str, object]:
    return asdict(v)
