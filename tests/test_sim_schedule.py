"""Camera configurations, OpSim schedules and the `simulate night` CLI."""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from commands.simulate_cli import simulate
from config.cameras import available_cameras, load_camera
from state.errors import ConfigurationError, InvalidInputError
from summit.schedule import generate_schedule, read_schedule, write_schedule

OPSIM_COLUMNS = {
    "observationId",
    "observationStartMJD",
    "fieldRA",
    "fieldDec",
    "band",
    "visitExposureTime",
    "airmass",
    "seeingFwhmEff",
    "seeingFwhmGeom",
    "skyBrightness",
    "rotSkyPos",
    "night",
    "fiveSigmaDepth",
    "altitude",
    "azimuth",
    "paraAngle",
    "visitTime",
    "slewTime",
    "filter",
}


def test_cameras() -> None:
    assert set(available_cameras()) >= {"lsstcam", "comcam", "latiss", "mini"}
    lsst = load_camera("lsstcam")
    assert len(lsst.detectors) == 189
    vendors = Counter(d.vendor for d in lsst.detectors)
    assert vendors == {"e2v": 13 * 9, "ITL": 8 * 9}
    e2v = next(d for d in lsst.detectors if d.vendor == "e2v")
    itl = next(d for d in lsst.detectors if d.vendor == "ITL")
    assert (e2v.nx, e2v.ny, len(e2v.amplifiers)) == (4096, 4004, 16)
    assert (itl.nx, itl.ny, len(itl.amplifiers)) == (4072, 4000, 16)
    assert e2v.amplifiers[0].raw_shape == (2048, 576) and itl.amplifiers[0].raw_shape == (2048, 544)
    assert lsst.detectors[94].name == "R22_S11" and lsst.pixel_scale_arcsec == 0.2
    assert len(load_camera("comcam").detectors) == 9 and len(load_camera("latiss").detectors) == 1
    mini = load_camera("mini")
    assert {len(d.amplifiers) for d in mini.detectors} == {2, 4}
    assert load_camera("lsstcam") is lsst  # validated once, then shared (frozen)
    assert len(e2v.crosstalk) == 16 and e2v.defects.hot_pixels


def test_unknown_camera() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown camera 'hsc'.*lsstcam"):
        load_camera("hsc")


def test_schedule_roundtrip_and_pairs(tmp_path: Path) -> None:
    cam = load_camera("comcam")
    visits = generate_schedule(cam, 20, seed=1)
    path = tmp_path / "opsim.db"
    write_schedule(visits, path)
    with sqlite3.connect(path) as db:
        cols = {r[1] for r in db.execute("PRAGMA table_info(observations)")}
    assert cols >= OPSIM_COLUMNS
    assert read_schedule(path) == tuple(visits)
    assert set(Counter(v.field_id for v in visits).values()) == {2}  # every field twice
    for a in visits:
        b = next(v for v in visits if v.field_id == a.field_id and v is not a)
        assert abs(b.mjd_start - a.mjd_start) * 24 * 60 > 5  # pairs minutes apart
    assert all(v2.mjd_start > v1.mjd_start for v1, v2 in itertools.pairwise(visits))
    assert generate_schedule(cam, 20, seed=1) == visits
    assert len(read_schedule(path, limit=5)) == 5


def _opsim(path: Path, rows: list[tuple]) -> Path:
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE observations (observationId, observationStartMJD, fieldRA, fieldDec,"
            " filter, visitExposureTime, airmass, seeingFwhmEff, skyBrightness, rotSkyPos)"
        )
        db.executemany(f"INSERT INTO observations VALUES ({','.join('?' * 10)})", rows)
    return path


def test_schedule_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_schedule(tmp_path / "nope.db")
    with pytest.raises(InvalidInputError, match="empty"):
        read_schedule(_opsim(tmp_path / "empty.db", []))
    row = (1, 60800.1, 10.0, -30.0, "r", 30.0, 1.1, 0.8, 21.0, 0.0)
    ok = read_schedule(_opsim(tmp_path / "old.db", [row]))  # old OpSim 'filter' column
    assert ok[0].band == "r" and ok[0].seeing_geom > 0
    overlap = (2, 60800.1 + 10 / 86400, 10.0, -30.0, "r", 30.0, 1.1, 0.8, 21.0, 0.0)
    with pytest.raises(InvalidInputError, match="before the previous visit"):
        read_schedule(_opsim(tmp_path / "overlap.db", [row, overlap]))
    bad_band = (1, 60800.1, 10.0, -30.0, "q", 30.0, 1.1, 0.8, 21.0, 0.0)
    with pytest.raises(InvalidInputError, match="unknown band"):
        read_schedule(_opsim(tmp_path / "band.db", [bad_band]))
    with sqlite3.connect(tmp_path / "cols.db") as db:
        db.execute("CREATE TABLE observations (observationId, fieldRA)")
    with pytest.raises(InvalidInputError, match="lacks OpSim columns"):
        read_schedule(tmp_path / "cols.db")
    (tmp_path / "junk.db").write_text("not a database")
    with pytest.raises(InvalidInputError):
        read_schedule(tmp_path / "junk.db")


def test_cli_night_and_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "night"
    r = runner.invoke(
        simulate, ["night", "--camera", "mini", "--visits", "4", "--seed", "1", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["visits"] == 4 and (out / "schedule.sqlite").is_file()
    assert read_schedule(out / "schedule.sqlite")[0].visit_id == manifest["first_visit"]
    with sqlite3.connect(out / "truth.sqlite") as db:
        assert db.execute("SELECT count(*) FROM exposures").fetchone()[0] == 16
        assert db.execute("SELECT count(*) FROM sources").fetchone()[0] > 0
    assert (out / "calibs" / "det000" / f"flat_{manifest['bands'][0]}.fits").is_file()
    assert manifest["n_templates"] == 8 and list((out / "templates").rglob("det003.fits"))

    r = runner.invoke(simulate, ["night", "--camera", "nope", "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "unknown camera" in r.output and not (tmp_path / "x").exists()
    empty = _opsim(tmp_path / "empty.db", [])
    r = runner.invoke(
        simulate,
        ["night", "--camera", "mini", "--schedule", str(empty), "--out", str(tmp_path / "y")],
    )
    assert r.exit_code != 0 and "empty" in r.output and not (tmp_path / "y").exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = runner.invoke(simulate, ["night", "--camera", "mini", "--out", str(blocker / "sub")])
    assert r.exit_code != 0 and "not writable" in r.output
    r = runner.invoke(simulate, ["night", "--camera", "mini", "--visits", "1", "--out", str(out)])
    assert r.exit_code != 0 and "at least 2" in r.output
