"""``simulate night``: write schedule, truth, calibrations and templates (and optionally raws).

Every input is checked before any work starts (camera name, visit count, schedule, output
directory); the directory layout is documented in docs/simulation.md.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from config.cameras import Camera, load_camera
from state.durable import writable_dir, write_durably
from state.errors import InvalidInputError, StorageError
from summit.calibs import write_master_calibs
from summit.camera import CameraSimulator, Truth, raw_path
from summit.schedule import Visit, generate_schedule, read_schedule, write_schedule
from summit.sky import BANDS, KIND_NAMES, Catalog, Sky, SkyParams
from summit.templates import write_template

SCHEDULE_FILE = "schedule.sqlite"
TRUTH_FILE = "truth.sqlite"


@dataclass(frozen=True)
class NightPlan:
    camera: Camera
    visits: tuple[Visit, ...]
    seed: int
    out: Path

    def sky(self, params: SkyParams | None = None) -> Sky:
        """The night's sky: objects evolve from 0.1 d before the first visit to the last;
        by default populated as the camera's ``[sky]`` section says."""
        params = params or SkyParams.for_camera(self.camera.sky)
        return Sky(
            self.seed, self.visits[0].mjd_start - 0.1, self.visits[-1].mjd_start + 0.1, params
        )


def _check_out(out: Path) -> None:
    try:
        writable_dir(out)
    except OSError as e:
        raise InvalidInputError(f"output directory {out} is not writable: {e}") from e


def check_visits(visits: int) -> int:
    """``visits``, or ``InvalidInputError`` when a generated night cannot have that many."""
    if visits < 2:
        raise InvalidInputError(f"--visits must be at least 2 (fields come in pairs), not {visits}")
    return visits


#: Nights a simulation may observe: from 2020-01-01, the epoch of the packed visit ids
#: (``base/apdb/ids.py``), to MJD 99999 (2132), whose visits still fit their 32 bits.
NIGHT_MJD_RANGE = (58849, 99999)


def check_night_mjd(night_mjd: int) -> int:
    """``night_mjd``, or ``InvalidInputError`` for a night whose visits ids cannot number."""
    low, high = NIGHT_MJD_RANGE
    if not low <= night_mjd <= high:
        raise InvalidInputError(
            f"--night-mjd must be between {low} (2020-01-01) and {high} (2132), not {night_mjd}"
        )
    return night_mjd


def plan_night(
    camera: str,
    visits: int,
    seed: int,
    out: Path,
    schedule: Path | None = None,
    night_mjd: int = 60800,
) -> NightPlan:
    """Validate everything and build the visit list; raises before anything is written."""
    cam = load_camera(camera)
    check_night_mjd(night_mjd)
    if schedule is not None:
        vis = read_schedule(schedule, limit=visits if visits > 0 else None)
    else:
        check_visits(visits)
        vis = tuple(generate_schedule(cam, visits, seed, night_mjd))
    _check_out(out)
    return NightPlan(cam, vis, seed, out)


def _truth_db(path: Path) -> sqlite3.Connection:
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE exposures (visit INTEGER, detector INTEGER, observation_id INTEGER,
            band TEXT, mjd_start REAL, true_wcs TEXT, PRIMARY KEY (visit, detector));
        CREATE TABLE sources (visit INTEGER, detector INTEGER, object_id INTEGER, kind TEXT,
            ra REAL, dec REAL, x REAL, y REAL, mag REAL, flux_njy REAL, flux_e REAL);
        CREATE TABLE objects (object_id INTEGER PRIMARY KEY, kind TEXT, ra REAL, dec REAL,
            u REAL, g REAL, r REAL, i REAL, z REAL, y REAL, period REAL, amplitude REAL,
            t0 REAL, tau_rise REAL, tau_fall REAL, rate_deg_day REAL, pa_deg REAL, t_ref REAL);
        """
    )
    return db


def _store_truth(db: sqlite3.Connection, v: Visit, det: int, truth: Truth) -> None:
    db.execute(
        "INSERT INTO exposures VALUES (?,?,?,?,?,?)",
        (v.visit_id, det, v.observation_id, v.band, v.mjd_start, json.dumps(truth.wcs)),
    )
    db.executemany(
        "INSERT INTO sources VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        [(v.visit_id, det, *row) for row in truth.rows()],
    )


def _store_objects(db: sqlite3.Connection, cat: Catalog) -> None:
    def f(a: float) -> float | None:
        return None if np.isnan(a) else float(a)

    rows = []
    for k in range(len(cat)):
        rows.append(
            (
                int(cat.id[k]),
                KIND_NAMES[int(cat.kind[k])],
                float(cat.ra[k]),
                float(cat.dec[k]),
                *map(float, cat.mag[k]),
                *(
                    f(getattr(cat, c)[k])
                    for c in (
                        "period",
                        "amplitude",
                        "t0",
                        "tau_rise",
                        "tau_fall",
                        "rate",
                        "pa",
                        "t_ref",
                    )
                ),
            )
        )
    db.executemany(f"INSERT OR IGNORE INTO objects VALUES ({','.join('?' * 18)})", rows)


def run_night(
    plan: NightPlan,
    *,
    calibs: bool = True,
    templates: bool = True,
    raws: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, object]:
    """Write everything for the night; returns the manifest (also written as manifest.json)."""
    out, cam = plan.out, plan.camera
    # The manifest says the night is whole: gone while it is rewritten, back (atomically) last,
    # so a simulation killed mid-way never leaves an older night's manifest over a mix of files.
    manifest_path = out / "manifest.json"
    try:
        manifest_path.unlink(missing_ok=True)
    except OSError as e:
        raise StorageError(f"cannot remove the previous {manifest_path}: {e}") from e
    sky = plan.sky()
    sim = CameraSimulator(cam, sky, plan.seed)
    write_schedule(plan.visits, out / SCHEDULE_FILE)
    progress(f"schedule: {len(plan.visits)} visits")
    try:
        db = _truth_db(out / TRUTH_FILE)
        with db:
            for v in plan.visits:
                for det in cam.detectors:
                    if raws:
                        truth = sim.write_raw(v, det.id, raw_path(out, v, det.id))
                    else:
                        truth = sim.truth(v, det.id)
                    _store_truth(db, v, det.id, truth)
                    _store_objects(db, sim.footprint_catalog(v, det.id))
            db.execute("CREATE INDEX objects_position ON objects (dec, ra)")
        db.close()
    except sqlite3.Error as e:
        raise StorageError(f"cannot write truth {out / TRUTH_FILE}: {e}") from e
    progress("truth written" + (" with raws" if raws else ""))
    bands = tuple(b for b in BANDS if any(v.band == b for v in plan.visits))
    if calibs:
        for det in cam.detectors:
            write_master_calibs(sim.signature(det.id), out / "calibs" / f"det{det.id:03d}", bands)
        progress(f"calibrations: {len(cam.detectors)} detectors, bands {''.join(bands)}")
    n_templates = 0
    if templates:
        first: dict[tuple[int, str], Visit] = {}
        for v in plan.visits:
            first.setdefault((v.field_id, v.band), v)
        for v in first.values():
            for det in cam.detectors:
                write_template(sim, v, det.id, out)
                n_templates += 1
        progress(f"templates: {n_templates}")
    manifest: dict[str, object] = {
        "camera": cam.name,
        "seed": plan.seed,
        "visits": len(plan.visits),
        "first_visit": plan.visits[0].visit_id,
        "last_visit": plan.visits[-1].visit_id,
        "bands": list(bands),
        "schedule": SCHEDULE_FILE,
        "truth": TRUTH_FILE,
        "calibs": "calibs/det<NNN>/" if calibs else None,
        "templates": "templates/<band>/field<NNNN>/det<NNN>.fits" if templates else None,
        "n_templates": n_templates,
        "raws": "raws/<day_obs>/<visit>/raw_<visit>_<NNN>.fits" if raws else None,
    }
    try:
        write_durably(manifest_path, json.dumps(manifest, indent=1).encode())
    except OSError as e:
        raise StorageError(f"cannot write {manifest_path}: {e}") from e
    return manifest
