"""Nightly Performance and Data Quality reports from constructed records and a simulated truth."""

from __future__ import annotations

import base64
import json
import re
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from base.prompt_records import (
    STAGES,
    Attempt,
    CcdOutcome,
    NightRecords,
    StageTime,
    VisitRecord,
    stage_array,
)
from base.reports import (
    as_diasources,
    data_quality_report,
    load_truth,
    performance_report,
    write_night_reports,
)
from base.reports.alert_quality import (
    PULL_SNR_EDGES,
    CcdArea,
    alert_quality,
    bright_star_false,
    ccd_noise,
    flux_pulls,
    pull_table,
    scope_truth,
)
from base.reports.quality import m50
from base.reports.truth import BrightStars, TruthSources, load_bright_stars, true_snr
from config.cameras import SkyConfig, load_camera
from state.errors import InvalidInputError, StorageError
from summit.schedule import Visit
from summit.simulation import plan_night, run_night

T0 = 1.8e9
N_VISITS = 40
LIMIT = 23.5  # the constructed DIASources: every changing source brighter than this


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[Visit, ...]]:
    """A real simulated night of the mini camera (truth only: no raws, calibs or templates).

    On the default (uncrowded) sky, so that the constructed detector below sees no blends.
    """
    out = tmp_path_factory.mktemp("night")
    plan = plan_night("mini", N_VISITS, 3, out)
    plan = replace(plan, camera=plan.camera.model_copy(update={"sky": SkyConfig()}))
    run_night(plan, calibs=False, templates=False)
    return out / "truth.sqlite", plan.visits


def build_night(visits: tuple[Visit, ...], n_det: int = 4) -> NightRecords:
    """Every CCD processed, except: visit 2 det 1 failed once (actor died) then processed;
    visit 3 det 2 timed out twice and was left for batch; visit 4 det 3 never ingested."""
    rng = np.random.default_rng(5)
    recs, stages, outcomes, attempts = [], [], [], []
    for k, v in enumerate(visits):
        recs.append(
            VisitRecord(v.visit_id, v.day_obs, "mini", v.band, v.ra, v.dec, v.mjd_start,
                        v.exptime, n_det, v.field_id)
        )  # fmt: skip
        t0 = T0 + 40.0 * k
        stages.append(StageTime(v.visit_id, None, "endReadout", t0))
        for d in range(n_det):
            if (k, d) == (4, 3):
                stages.append(StageTime(v.visit_id, d, "inBuffer", t0 + 1.0))
                continue
            t = t0
            for s in STAGES[1:]:
                t += 0.0 if s == "preloadReady" else 1.0 + rng.exponential(1.5)
                stages.append(StageTime(v.visit_id, d, s, t if s != "preloadReady" else t0 - 8))
                if (k, d) == (3, 2) and s == "preloadReady":
                    break
            ok = (k, d) != (3, 2)
            n_attempts = 2 if (k, d) in ((2, 1), (3, 2)) else 1
            for a in range(1, n_attempts):
                attempts.append(
                    Attempt(v.visit_id, d, a, "failed",
                            "actor_died" if (k, d) == (2, 1) else "timeout", "boom", "retried")
                )  # fmt: skip
            outcomes.append(
                CcdOutcome(
                    v.visit_id, d, n_attempts,
                    "processed" if ok else "abandoned",
                    None if ok else "timeout",
                    "" if ok else "exceeded 60 s",
                    "none" if ok else "left for batch",
                    n_dia_sources=5 if ok else 0, n_alerts=5 if ok else 0,
                    zeropoint=31.0 + 0.05 * rng.standard_normal() - 0.2 * v.airmass,
                    sky_level=800 + 30 * k, seeing_arcsec=v.seeing_eff,
                    psf_fwhm_px=v.seeing_eff / 0.2, astrom_rms_mas=15 + rng.random(),
                    n_sources=100 + d, flags=("edge",) if d == 0 else (),
                )
            )  # fmt: skip
            attempts.append(
                Attempt(v.visit_id, d, n_attempts, outcomes[-1].status,
                        outcomes[-1].failure_type, outcomes[-1].reason, outcomes[-1].recovery)
            )  # fmt: skip
    return NightRecords(tuple(recs), stage_array(stages), tuple(outcomes), tuple(attempts),
                        day_obs=visits[0].day_obs)  # fmt: skip


def on_pixels(t: TruthSources) -> np.ndarray:
    """Truth rows on their detector's pixels (the simulator lists a 30 px margin too)."""
    cam = load_camera("mini")
    size = np.array([(cam.detector(int(d)).nx, cam.detector(int(d)).ny) for d in t.detector])
    size = size.reshape(len(t), 2)
    return (t.x >= -0.5) & (t.x < size[:, 0] - 0.5) & (t.y >= -0.5) & (t.y < size[:, 1] - 0.5)


def diasources_for(
    truth_path: Path, visits: tuple[Visit, ...], limit: float, soft: bool = False
) -> list[dict]:
    """A DIASource 0.3″ off every true changing source brighter than ``limit`` (or, if ``soft``,
    with a probability falling smoothly through 50 % at ``limit``), plus three artifacts."""
    t = load_truth(truth_path, [v.visit_id for v in visits])
    out = []
    night = build_night(visits)
    processed = {(o.visit, o.detector) for o in night.outcomes if o.status == "processed"}
    rng = np.random.default_rng(4)
    if soft:
        seen = rng.random(len(t)) < 1 / (1 + np.exp((t.diff_mag - limit) / 0.4))
    else:
        seen = t.diff_mag < limit
    for i in np.flatnonzero(seen & on_pixels(t)):
        if (int(t.visit[i]), int(t.detector[i])) not in processed:
            continue
        out.append({
            "visit": int(t.visit[i]), "detector": int(t.detector[i]),
            "ra": float(t.ra[i]) + 0.3 / 3600 / np.cos(np.radians(t.dec[i])),
            "dec": float(t.dec[i]), "psfFlux": float(t.diff_flux_njy[i]) + 50.0,
            "psfFluxErr": 50.0, "band": str(t.band[i]), "midpointMjdTai": 60800.0,
        })  # fmt: skip
    for v in visits[:3]:
        out.append({"visit": v.visit_id, "ra": v.ra + 0.01, "dec": v.dec, "psfFlux": 1e3,
                    "psfFluxErr": 100.0, "detector": 0, "band": v.band})  # fmt: skip
    return out


def test_performance_numbers(sim: tuple[Path, tuple[Visit, ...]]) -> None:
    _, visits = sim
    perf = performance_report(build_night(visits))
    taken = N_VISITS * 4
    assert perf["images"] == {
        "taken": taken, "readOut": taken, "inBuffer": taken, "ingested": taken - 1,
        "notIngested": 1,
    }  # fmt: skip
    pipes = {p["stage"]: p for p in perf["pipelines"]}
    assert pipes["ingested"]["imagesDone"] == taken - 1
    assert pipes["alertsPublished"]["imagesDone"] == taken - 2
    assert pipes["alertsPublished"]["visitsComplete"] == N_VISITS - 2
    assert pipes["preloadReady"]["imagesDone"] == taken - 1
    assert perf["outcomes"]["processed"] == taken - 2
    assert perf["outcomes"]["abandoned"] == 1 and perf["outcomes"]["noOutcome"] == 1
    assert perf["outcomes"]["retriedCcds"] == 2
    assert perf["products"] == {"diaSources": 5 * (taken - 2), "alerts": 5 * (taken - 2)}
    f = perf["failures"]
    assert f["nRecoverable"] == 1 and f["nUnrecoverable"] == 1
    assert f["recoverable"][0]["failureType"] == "actor_died"
    assert f["unrecoverable"][0]["recovery"] == "left for batch"
    by_type = {t["failureType"]: t for t in f["byType"]}
    # the first timeout of the abandoned CCD was retried, the second was not: neither recovered
    assert by_type["actor_died"] == {
        "failureType": "actor_died", "recoverable": 1, "unrecoverable": 0,
        "recoveries": {"retried": 1},
    }  # fmt: skip
    assert by_type["timeout"]["unrecoverable"] == 1
    assert perf["latency"]["visit"]["n"] == N_VISITS  # over the CCDs that published
    assert perf["latency"]["ccd"]["n"] == taken - 2


def test_failures_without_an_attempt_log_still_show() -> None:
    night = NightRecords(
        (),
        stage_array([]),
        (
            CcdOutcome(1, 0, 3, "processed"),
            CcdOutcome(1, 1, 1, "failed", "bad_input", "corrupt FITS", "none"),
            CcdOutcome(1, 2, 1, "failed", "InvalidInputError", "bad header", "none"),
        ),
    )
    f = performance_report(night)["failures"]
    assert f["nRecoverable"] == 2 and f["nUnrecoverable"] == 2
    assert f["nRecoverableObservations"] == 1
    assert {t["failureType"] for t in f["byType"]} == {"unknown", "bad_input", "InvalidInputError"}


def test_quality_numbers_and_efficiency(sim: tuple[Path, tuple[Visit, ...]]) -> None:
    truth_path, visits = sim
    night = build_night(visits)
    truth = load_truth(truth_path, [v.visit_id for v in visits])
    assert len(truth) and "star" not in set(truth.kind.tolist())
    dia = as_diasources(diasources_for(truth_path, visits, limit=LIMIT))
    dq = data_quality_report(night, truth, dia)
    band = visits[0].band
    per = dq["perBand"][band]
    assert per["nCcds"] == sum(o.status == "processed" for o in night.outcomes)
    seeing = [v.seeing_eff for v in visits if v.band == band for _ in range(4)]
    assert per["seeingArcsec"]["median"] == pytest.approx(np.median(seeing), rel=0.05)
    assert dq["flags"] == {"edge": N_VISITS}
    assert len(dq["visits"]) == N_VISITS
    eff = dq["detectionEfficiency"]
    processed = {(o.visit, o.detector) for o in night.outcomes if o.status == "processed"}
    on_processed = np.array(
        [(int(v), int(d)) in processed for v, d in zip(truth.visit, truth.detector, strict=True)]
    )
    expected = on_processed & np.isfinite(truth.diff_mag) & on_pixels(truth)
    assert expected.sum() < (on_processed & np.isfinite(truth.diff_mag)).sum()
    assert eff["nTruth"] == int(expected.sum())
    assert 0 < eff["nDetected"] == int((expected & (truth.diff_mag < LIMIT)).sum())
    assert eff["nUnmatchedDiaSources"] == 3
    assert eff["nDetected"] < eff["nTruth"]
    for b in eff["bins"]:  # the constructed detector is perfect to LIMIT and blind beyond
        assert b["efficiency"] == (1.0 if b["magHi"] <= LIMIT else 0.0)
    assert LIMIT - 0.5 <= eff["m50"] <= LIMIT + 0.5
    assert eff["fluxPull"]["median"] == pytest.approx(1.0)


def test_m50_interpolates_the_last_crossing() -> None:
    bins = [
        {"magLo": 16.0, "magHi": 17.0, "efficiency": 0.4},  # saturated
        {"magLo": 17.0, "magHi": 18.0, "efficiency": 1.0},
        {"magLo": 18.0, "magHi": 19.0, "efficiency": 0.8},
        {"magLo": 19.0, "magHi": 20.0, "efficiency": 0.2},
    ]
    assert m50(bins) == pytest.approx(18.5 + 0.3 / 0.6)
    assert m50(bins[1:2]) is None


def test_truth_difference_flux_of_a_variable(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "truth.sqlite")
    db.executescript(
        """
        CREATE TABLE exposures (visit INTEGER, detector INTEGER, observation_id INTEGER,
            band TEXT, mjd_start REAL, true_wcs TEXT);
        CREATE TABLE sources (visit INTEGER, detector INTEGER, object_id INTEGER, kind TEXT,
            ra REAL, dec REAL, x REAL, y REAL, mag REAL, flux_njy REAL, flux_e REAL);
        CREATE TABLE objects (object_id INTEGER PRIMARY KEY, kind TEXT, ra REAL, dec REAL,
            u REAL, g REAL, r REAL, i REAL, z REAL, y REAL, period REAL, amplitude REAL,
            t0 REAL, tau_rise REAL, tau_fall REAL, rate_deg_day REAL, pa_deg REAL, t_ref REAL);
        INSERT INTO exposures VALUES (7, 0, 1, 'g', 60800.0, '{}');
        INSERT INTO sources VALUES (7, 0, 1, 'variable', 10, 0, 0, 0, 20.0, 36307.8, 0);
        INSERT INTO sources VALUES (7, 0, 2, 'transient', 10, 0.1, 0, 0, 21.0, 14454.4, 0);
        INSERT INTO sources VALUES (7, 0, 3, 'star', 10, 0.2, 0, 0, 18.0, 229086.8, 0);
        INSERT INTO sources VALUES (8, 0, 2, 'transient', 10, 0.1, 0, 0, 21.0, 14454.4, 0);
        INSERT INTO objects (object_id, kind, ra, dec, u, g, r, i, z, y)
            VALUES (1, 'variable', 10, 0, 21, 20.5, 20, 20, 20, 20);
        """
    )
    db.commit()
    db.close()
    t = load_truth(tmp_path / "truth.sqlite", [7])
    assert list(t.object_id) == [1, 2]
    template = 10 ** ((31.4 - 20.5) / 2.5)  # the variable's mean flux in g
    assert t.diff_flux_njy[0] == pytest.approx(36307.8 - template)
    assert t.diff_mag[0] == pytest.approx(31.4 - 2.5 * np.log10(36307.8 - template))
    assert t.diff_mag[1] == pytest.approx(21.0, abs=1e-4)
    with pytest.raises(InvalidInputError, match="no truth"):
        load_truth(tmp_path / "missing.sqlite")
    (tmp_path / "junk.sqlite").write_text("not a database")
    with pytest.raises(InvalidInputError, match="not a dmcs truth"):
        load_truth(tmp_path / "junk.sqlite")


def test_diasource_input_forms() -> None:
    rows = [{"visit": 1, "ra": 1.0, "dec": 2.0, "psfFlux": 3.0}]
    cols = as_diasources(rows)
    assert cols["detector"][0] == -1 and np.isnan(cols["psfFluxErr"][0])
    arr = np.array([(1, 1.0, 2.0)], dtype=[("visit", "i8"), ("ra", "f8"), ("dec", "f8")])
    assert as_diasources(arr)["ra"][0] == 1.0
    assert as_diasources({"visit": [1], "ra": [1.0], "dec": [2.0]})["dec"][0] == 2.0
    with pytest.raises(InvalidInputError, match="lack"):
        as_diasources({"visit": [1], "ra": [1.0]})
    with pytest.raises(InvalidInputError, match="lacks"):
        as_diasources([{"visit": 1, "ra": 1.0}])
    with pytest.raises(InvalidInputError, match="non-finite"):
        as_diasources({"visit": [1], "ra": [np.nan], "dec": [0.0]})
    with pytest.raises(InvalidInputError, match="wrong type"):
        as_diasources({"visit": ["a"], "ra": [1.0], "dec": [0.0]})
    with pytest.raises(InvalidInputError):
        as_diasources(42)


def _assert_self_contained(html: str) -> None:
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", html)
    assert "<script" not in html and "@import" not in html and "url(" not in html
    for data in re.findall(r'src="data:image/png;base64,([^"]+)"', html):
        assert base64.b64decode(data).startswith(b"\x89PNG")


def test_files_written(
    sim: tuple[Path, tuple[Visit, ...]], tmp_path: Path, artifacts_dir: Path
) -> None:
    truth_path, visits = sim
    night = build_night(visits)
    dia = diasources_for(truth_path, visits, limit=LIMIT, soft=True)
    out = artifacts_dir / "reports"
    paths = write_night_reports(night, out, truth=truth_path, diasources=dia)
    assert dict(paths.items())["quality_html"] == out / "quality.html"
    for p in paths.all():
        assert p.is_file() and p.stat().st_size > 0, p
    names = {p.name for p in paths.images}
    assert names == {
        "performance_pipelines.png", "performance_latency.png", "performance_stages.png",
        "quality_metrics.png", "quality_efficiency.png",
    }  # fmt: skip
    md = paths.performance_md.read_text()
    for name in names & {p.name for p in paths.images if p.name.startswith("performance")}:
        assert f"]({name})" in md
    assert "actor_died" in md and "left for batch" in md and "### By type" in md
    html = paths.performance_html.read_text()
    _assert_self_contained(html)
    assert html.count("data:image/png;base64,") == 3
    qhtml = paths.quality_html.read_text()
    _assert_self_contained(qhtml)
    assert qhtml.count("data:image/png;base64,") == 2
    perf = json.loads(paths.performance_json.read_text())
    assert perf["failures"]["nUnrecoverable"] == 1 and perf["requirement"] == "DMS-REQ-0099"
    dq = json.loads(paths.quality_json.read_text())
    assert dq["detectionEfficiency"]["available"] and dq["requirement"] == "DMS-REQ-0097"
    assert "m50" in paths.quality_md.read_text()


def test_empty_night(tmp_path: Path) -> None:
    night = NightRecords((), stage_array([]), (), day_obs=20260101)
    paths = write_night_reports(night, tmp_path / "empty")
    assert paths.images == ()
    for p in (paths.performance_md, paths.performance_html):
        assert "No visits, stage times or CCD outcomes were recorded" in p.read_text()
    assert "No processed CCDs" in paths.quality_md.read_text()
    assert "needs the truth and the DIASources" in paths.quality_md.read_text()
    perf = json.loads(paths.performance_json.read_text())
    assert perf["empty"] and perf["images"]["taken"] == 0
    assert perf["latency"]["visitShareWithinBudget"] is None
    _assert_self_contained(paths.quality_html.read_text())


def test_night_without_failures_says_so(sim: tuple[Path, tuple[Visit, ...]]) -> None:
    _, visits = sim
    night = build_night(visits[:2])
    perf = performance_report(night)
    assert perf["failures"]["nRecoverable"] == perf["failures"]["nUnrecoverable"] == 0


def test_unwritable_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError):
        write_night_reports(NightRecords((), stage_array([]), ()), blocker / "reports")


async def test_reports_from_the_database(
    pg_dsn: str, sim: tuple[Path, tuple[Visit, ...]], tmp_path: Path
) -> None:
    """The whole path the replay takes: records in PostgreSQL -> fetch_night -> report files."""
    import asyncpg

    from base.prompt_records import PromptRecords

    truth_path, visits = sim
    built = build_night(visits[:6])
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    try:
        await pool.execute('DROP SCHEMA IF EXISTS "prompt_test_reports" CASCADE')
        records = await PromptRecords.connect(pool, "prompt_test_reports")
        for v in built.visits:
            await records.record_visit(v)
        rows = [
            StageTime(int(r["visit"]), None if r["detector"] < 0 else int(r["detector"]),
                      STAGES[r["stage"]], float(r["tai"]))
            for r in built.stages
            if STAGES[r["stage"]] != "alertsPublished"
        ]  # fmt: skip
        await records.record_stages(rows)
        for a in built.attempts:
            o = next(o for o in built.outcomes if (o.visit, o.detector) == (a.visit, a.detector))
            if a.attempt < o.attempt:
                await records.record_outcome(
                    CcdOutcome(a.visit, a.detector, a.attempt, a.status, a.failure_type,
                               a.reason, a.recovery)
                )  # fmt: skip
        times = built.ccd_times()
        published = dict(
            zip(zip(times.visit.tolist(), times.detector.tolist(), strict=True),
                times.stage("alertsPublished").tolist(), strict=True)
        )  # fmt: skip
        for o in built.outcomes:
            await records.record_outcome(CcdOutcome(**{**o.__dict__, "n_alerts": 0}))
            t = published[(o.visit, o.detector)]
            if np.isfinite(t):
                await records.record_alerts(o.visit, o.detector, 3, float(t))
        night = await records.fetch_night(day_obs=visits[0].day_obs)
    finally:
        await pool.close()
    perf = performance_report(night)
    assert perf["images"]["taken"] == 24 and perf["images"]["ingested"] == 23
    assert perf["products"]["alerts"] == 3 * 22
    assert perf["failures"]["nRecoverable"] == 1 and perf["failures"]["nUnrecoverable"] == 1
    assert perf["failures"]["recoverable"][0]["failureType"] == "actor_died"
    assert perf["latency"] == performance_report(built)["latency"] | {
        "alertShareWithinBudget": perf["latency"]["alertShareWithinBudget"]
    }
    paths = write_night_reports(night, tmp_path / "db", truth=truth_path)
    assert "actor_died" in paths.performance_html.read_text()


def hand_truth() -> TruthSources:
    """Seven truth rows of visit 1 (and one of visit 2) around (10°, 0°), 1″ = 1/3600°.

    A, B, C: bright, on detector 0's pixels. D: in detector 0's margin (off its pixels).
    E: on detector 1, which was not processed. F: on detector 0, no change (true S/N ≈ 0).
    A2: A again, listed in detector 1's margin. G: visit 2 (not in the night).
    """
    a = 1.0 / 3600.0
    rows = [  # visit, det, id, ra, dec, x, y, diff_e, flux_e
        (1, 0, 1, 10.0, 0.0, 100.0, 100.0, 1e4, 1e4),  # A
        (1, 0, 2, 10.0, 20 * a, 100.0, 200.0, 5e3, 5e3),  # B
        (1, 0, 3, 10.0, 40 * a, 100.0, 300.0, 5e3, 5e3),  # C
        (1, 0, 4, 10.0, 60 * a, -10.0, 100.0, 5e3, 5e3),  # D
        (1, 1, 5, 10.0, 80 * a, 50.0, 50.0, 5e3, 5e3),  # E
        (1, 0, 6, 10.0, 100 * a, 200.0, 300.0, 1.0, 5e3),  # F
        (1, 1, 1, 10.0, 0.0, -20.0, 100.0, 1e4, 1e4),  # A2
        (2, 0, 7, 10.0, 120 * a, 100.0, 100.0, 5e3, 5e3),  # G
    ]
    c = list(zip(*rows, strict=True))
    n = len(rows)
    diff_e = np.array(c[7], float)
    return TruthSources(
        visit=np.array(c[0]), detector=np.array(c[1]), object_id=np.array(c[2]),
        kind=np.full(n, "transient"), band=np.full(n, "r"), ra=np.array(c[3]),
        dec=np.array(c[4]), mag=np.full(n, 20.0), diff_flux_njy=diff_e * 3.0,
        diff_mag=31.4 - 2.5 * np.log10(diff_e * 3.0), x=np.array(c[5]), y=np.array(c[6]),
        flux_e=np.array(c[8], float), diff_e=diff_e,
    )  # fmt: skip


def test_alert_quality_counts_against_a_hand_built_truth() -> None:
    t = hand_truth()
    areas = {(1, 0): CcdArea(nx=256, ny=512, sky_e=100.0, fwhm_px=4.0)}
    scoped, snr = scope_truth(t, areas)
    assert scoped.object_id.tolist() == [1, 2, 3, 6], "on processed pixels, each source once"
    alpha = 4.0 / (2 * np.sqrt(2 ** (1 / 3) - 1))
    neff = np.pi * alpha**2 * 5 / 4  # the simulator's Moffat (beta 3): 1 / sum(P^2)
    assert snr[0] == pytest.approx(1e4 / np.sqrt(neff * 100 + 1e4), rel=1e-3)
    assert snr[3] < 1 and (snr[:3] > 7).all()
    a = 1.0 / 3600.0
    dia = {  # near A (alerted), near B (below the cut), near D (no object), two artefacts
        "visit": np.array([1, 1, 1, 1, 1]),
        "ra": np.full(5, 10.0),
        "dec": np.array([0.3 * a, 20.4 * a, 60.2 * a, 150 * a, 160 * a]),
        "psfFlux": np.array([3e4, 1.5e4, 1.5e4, 1e3, 1e3]),
        "psfFluxErr": np.array([1e3, 1e3, 1e3, 1e3, 1e3]),
        "reliability": np.array([0.9, 0.1, 0.8, 0.95, 0.2]),
        "diaObjectId": np.array([11, 12, 0, 14, 15]),
        "ssObjectId": np.zeros(5, np.int64),
    }
    every = t.select(t.visit == 1)
    q = alert_quality(every, scoped, snr, dia, threshold=0.5)
    assert q["nTruthOnCcds"] == 4 and q["nTruthSnrGe7"] == 3
    assert q["completenessSnrGe7"] == pytest.approx(2 / 3)
    assert q["completenessSnrGe7Alerted"] == pytest.approx(1 / 3)
    assert q["purityAllDiaSources"] == pytest.approx(3 / 5)
    assert q["nAlerted"] == 2 and q["purityAlerted"] == pytest.approx(1 / 2)
    assert q["nWithoutObject"] == 1
    low = q["completenessBySnr"][0]
    assert (low["lo"], low["nTruth"], low["nDetected"]) == (0.0, 1, 0)
    assert sum(b["nTruth"] for b in q["completenessBySnr"]) == 4
    assert sum(b["nAlerted"] for b in q["completenessBySnr"]) == 1
    assert sum(b["nTruth"] for b in q["completenessByMag"]) == 4
    ast = q["astrometry"]
    assert ast["n"] == 1, "only the S/N 30 match of A counts (B's is S/N 15)"
    assert ast["diaSourceRmsMas"] == pytest.approx(300.0, rel=1e-3)
    assert ast["nFlagged"] == 0
    at_edge = dict(dia, pixelFlags_edge=np.array([True, False, False, False, False]))
    ast = alert_quality(every, scoped, snr, at_edge, threshold=0.5)["astrometry"]
    assert (ast["n"], ast["nFlagged"], ast["diaSourceRmsMas"]) == (0, 1, None), (
        "a centroid cut by the CCD's edge is not the astrometry's"
    )
    assert ast["diaSourceRmsMasWithFlagged"] == pytest.approx(300.0, rel=1e-3)
    pulls = {b["lo"]: b for b in q["pullsBySnr"]}
    assert sorted(pulls) == [20.0, 50.0], "by true S/N: A at 79, B at 48; C has no DIASource"
    assert pulls[50.0]["n"] == 1 and pulls[50.0]["median"] == pytest.approx(0.0, abs=1e-9)
    off = dict(dia, psfFlux=dia["psfFlux"] + np.array([2e3, -1e3, 0, 0, 0]))
    moved = alert_quality(every, scoped, snr, off, 0.5)["pullsBySnr"]
    moved = {b["lo"]: b["median"] for b in moved}
    assert moved == pytest.approx({50.0: 2.0, 20.0: -1.0})
    flagged = dict(dia, isDipole=np.array([True, False, False, False, False]))
    assert [b["n"] for b in alert_quality(every, scoped, snr, flagged, 0.5)["pullsBySnr"]] == [1]
    no_cut = alert_quality(every, scoped, snr, dia, threshold=None)
    assert no_cut["nAlerted"] == 4 and no_cut["completenessSnrGe7Alerted"] == pytest.approx(2 / 3)


def test_alert_quality_of_a_night_without_diasources() -> None:
    """A night that processed nothing (a replay that failed at start) has figures, not an
    IndexError that hid the failure's cause in the replay's summary."""
    t = hand_truth()
    scoped, snr = scope_truth(t, {(1, 0): CcdArea(nx=256, ny=512, sky_e=100.0, fwhm_px=4.0)})
    empty = {k: np.array([]) for k in ("visit", "ra", "dec", "psfFlux", "psfFluxErr")}
    empty |= {"reliability": np.array([]), "diaObjectId": np.array([], np.int64)}
    q = alert_quality(t.select(t.visit == 1), scoped, snr, empty, threshold=0.5)
    assert q["nTruthSnrGe7"] == 3 and q["completenessSnrGe7"] == 0.0
    assert q["completenessSnrGe7Alerted"] == 0.0 and q["nAlerted"] == 0


def test_false_diasources_near_bright_stars_are_counted_per_star_visit(tmp_path: Path) -> None:
    a = 1.0 / 3600.0
    stars = BrightStars(  # S1 on detector 0's pixels in visits 1 and 2; S2 off them; S3 det 1
        18.0, visit=np.array([1, 2, 1, 1]), detector=np.array([0, 0, 0, 1]),
        ra=np.full(4, 10.0), dec=np.array([0.0, 0.0, 100 * a, 200 * a]),
        x=np.array([50.0, 50.0, -5.0, 50.0]), y=np.full(4, 50.0),
    )  # fmt: skip
    areas = {(1, 0): CcdArea(256, 256, 100.0, 4.0), (2, 0): CcdArea(256, 256, 100.0, 4.0)}
    dia = {  # 3″ from S1 (false), 4″ from S1 (real), 8″ from S1, visit 2 at S1, near S2
        "visit": np.array([1, 1, 1, 2, 1]),
        "ra": np.full(5, 10.0),
        "dec": np.array([3 * a, 4 * a, 8 * a, 0.5 * a, 101 * a]),
    }
    real = np.array([False, True, False, False, False])
    b = bright_star_false(stars, areas, dia, real)
    assert (b["nStarVisits"], b["nFalseNear"]) == (2, 2), "S1 twice; its false neighbours"
    assert b["falsePerStarVisit"] == pytest.approx(1.0)
    flags = dict(dia, pixelFlags_suspect=np.array([True, False, False, False, False]))
    alerted = np.array([False, True, False, True, False])
    b = bright_star_false(stars, areas, flags, real, alerted=alerted)
    assert (b["nFalseNearUnflagged"], b["nFalseNearAlerted"]) == (1, 1)
    assert bright_star_false(stars, {}, dia, real)["falsePerStarVisit"] is None
    with pytest.raises(InvalidInputError, match="no truth database"):
        load_bright_stars(tmp_path / "absent.sqlite", [1])
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database")
    with pytest.raises(InvalidInputError, match="not a dmcs truth database"):
        load_bright_stars(bad, [1])


def _changes(diff_e: np.ndarray, flux_e: np.ndarray) -> TruthSources:
    """Transients at (100, 100) of detector 0, visit 1, one per entry (electrons)."""
    n = len(diff_e)
    return TruthSources(
        visit=np.ones(n, np.int64), detector=np.zeros(n, np.int64), object_id=np.arange(n),
        kind=np.full(n, "transient"), band=np.full(n, "r"), ra=np.full(n, 10.0),
        dec=np.zeros(n), mag=np.full(n, 22.0), diff_flux_njy=np.asarray(diff_e, float),
        diff_mag=np.full(n, 22.0), x=np.full(n, 100.0), y=np.full(n, 100.0),
        flux_e=np.asarray(flux_e, float), diff_e=np.asarray(diff_e, float),
    )  # fmt: skip


def test_true_snr_counts_the_read_and_template_noise_the_difference_has() -> None:
    """A PSF flux on (visit − template) of the simulator's Moffat: the noise of many
    realisations is the visit's sky, read noise and source photons plus the template's own
    noise. The S/N without the last two (the report's before) was 11 % too high here."""
    from summit.templates import psf_image

    fwhm, sky, rn2, tvar, flux = 4.5, 400.0, 49.0, 40.0, 1500.0
    p = psf_image(fwhm).astype(np.float64)
    rng = np.random.default_rng(5)
    n = 4000
    visit = rng.poisson(sky + flux * p, (n, *p.shape)) - sky
    visit = visit + rng.normal(0.0, np.sqrt(rn2), visit.shape)
    template = rng.normal(0.0, np.sqrt(tvar), visit.shape)
    w = p / (p * p).sum()
    measured = ((visit - template) * w).sum(axis=(1, 2))
    t = _changes(np.array([flux]), np.array([flux]))
    honest = true_snr(t, np.array([sky]), np.array([fwhm]), rn2, tvar)[0]
    assert flux / measured.std() == pytest.approx(honest, rel=0.04)
    assert true_snr(t, np.array([sky]), np.array([fwhm]))[0] > 1.08 * honest


def test_ccd_noise_follows_the_camera_and_the_template_recipe() -> None:
    from summit.templates import TEMPLATE_EPOCHS, template_sky_variance

    cam = load_camera("mini")
    rn2, tvar = ccd_noise(cam, 0, "r", 28.0)
    amps = cam.detector(0).amplifiers
    assert rn2 == pytest.approx(np.mean([a.read_noise**2 for a in amps]))
    njy_per_e = 10 ** ((31.4 - 28.0) / 2.5)
    assert tvar == pytest.approx(template_sky_variance(cam, 0, "r") / njy_per_e**2)
    assert 0 < tvar < 1e4 and TEMPLATE_EPOCHS == 20
    assert ccd_noise(cam, 0, "r", None) == (rn2, 0.0)
    areas = {(1, 0): CcdArea(256, 256, 400.0, 4.5, rn2, tvar)}
    t = _changes(np.array([1500.0]), np.array([1500.0]))
    assert scope_truth(t, areas)[1][0] == pytest.approx(
        true_snr(t, np.array([400.0]), np.array([4.5]), rn2, tvar)[0]
    )


def test_pulls_are_binned_by_true_snr_without_eddington_bias() -> None:
    """Right fluxes and errors, sources piling up towards faint fluxes: the pulls of a bin of
    *measured* S/N are biased (the upward fluctuations of fainter sources move into it); a
    bin of true S/N is not."""
    rng = np.random.default_rng(8)
    true = 4.0 + rng.pareto(1.5, 20000)
    t = _changes(true * 100.0, np.zeros(true.size))
    meas = true + rng.normal(0.0, 1.0, true.size)
    dia = {
        "ra": np.zeros(true.size), "psfFlux": meas * 100.0,
        "psfFluxErr": np.full(true.size, 100.0),
    }  # fmt: skip
    nearest = np.arange(true.size)
    snr, pull = flux_pulls(t, true, dia, nearest)
    assert np.array_equal(snr, true)
    by_true = [b for b in pull_table(snr, pull, np.asarray(PULL_SNR_EDGES)) if b["n"] >= 300]
    assert len(by_true) >= 3
    for b in by_true:
        assert abs(b["median"]) < 0.1 and 0.9 < b["robustSigma"] < 1.1, b
    by_measured = pull_table(np.abs(meas), pull, np.asarray(PULL_SNR_EDGES))
    assert max(b["median"] for b in by_measured) > 0.2


def test_each_bin_of_pulls_carries_the_bootstrap_range_of_its_robust_sigma() -> None:
    """A night's bin of ~30 pulls cannot tell σ = 1 from 1.2; the table says how well each
    bin knows its σ: over many such bins of unit-normal pulls the 68 % range holds 1 about
    68 % of the time, and it narrows as a bin fills."""
    rng = np.random.default_rng(3)
    pulls = rng.normal(0.0, 1.0, 200 * 30 + 3000)
    snr = np.r_[np.repeat(np.arange(200.0), 30), np.full(3000, 500.0)]
    table = pull_table(snr, pulls, np.r_[np.arange(201.0), np.inf])
    small, large = table[:-1], table[-1]
    assert len(small) == 200 and {b["n"] for b in small} == {30} and large["n"] == 3000
    ranges = np.array([b["robustSigmaRange68"] for b in small])
    assert all(lo < b["robustSigma"] < hi for (lo, hi), b in zip(ranges, small, strict=True))
    covered = float(np.mean((ranges[:, 0] < 1.0) & (ranges[:, 1] > 1.0)))
    assert 0.55 < covered < 0.85, covered
    assert np.median(np.diff(ranges, axis=1)) > 0.2
    lo, hi = large["robustSigmaRange68"]
    assert lo < 1.0 < hi and hi - lo < 0.06, large
