"""Batch reprocessing (``base/reprocess``): same DIASources as the prompt code, exactly once,
kill-and-resume, release namespaces, catch-up into the prompt products."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from base.apdb.ids import IdPacker
from base.prompt import ccd_work
from base.prompt_records import CcdOutcome, PromptRecords, VisitRecord
from base.registry import Repository
from base.registry.products import register_night
from base.reprocess.executor import InlineExecutor
from base.reprocess.ledger import Ledger
from base.reprocess.observer import RunObserver
from base.reprocess.plan import ccd_units
from base.reprocess.register import register_night_raws
from base.reprocess.runner import ReprocessConfig, reprocess
from state.errors import CommandRejected, InvalidInputError

DAY_OBS = 20250505
REGISTRY = "rp_registry"


async def register_raws(dsn: str, night: Path, schema: str = REGISTRY) -> None:
    repo = await Repository.connect(dsn, schema)
    try:
        assert await register_night_raws(repo, night) == 8
        assert await register_night_raws(repo, night) == 0
    finally:
        await repo.close()


class Recorder(RunObserver):
    """Keeps what a run reported."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, str, int]] = []
        self.progressed: list[tuple[str, int, int]] = []
        self.failures: list[tuple[str, str, int, bool]] = []
        self.ends: list[str] = []

    def began(self, run: str, mode: str, workers: int) -> None:
        self.starts.append((run, mode, workers))

    def progress(self, phase: str, done: int, total: int) -> None:
        self.progressed.append((phase, done, total))

    def progress_of(self, phase: str) -> list[tuple[int, int]]:
        return [(d, t) for p, d, t in self.progressed if p == phase]

    def ended(self, status: str) -> None:
        self.ends.append(status)

    def failure(self, unit: str, reason: str, attempt: int, final: bool) -> None:
        self.failures.append((unit, reason, attempt, final))


@pytest.fixture(scope="module")
async def night(pg_dsn: str, mini_night: Path) -> Path:
    await register_raws(pg_dsn, mini_night)
    return mini_night


def config(
    dsn: str, night: Path, release: str, release_id: int, registry: str = REGISTRY, **kw: Any
) -> ReprocessConfig:
    return ReprocessConfig(
        dsn=dsn,
        night_dir=night,
        release=release,
        release_id=release_id,
        first_night=DAY_OBS,
        registry_schema=registry,
        **kw,
    )


async def dia_sources(dsn: str, schema: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(
            await conn.fetch(
                'SELECT "diaSourceId", "diaObjectId", "ssObjectId", reliability, visit,'
                f' detector, ra, dec, "psfFlux" FROM "{schema}"."DiaSource"'
                " ORDER BY visit, detector, ra"
            )
        )
    finally:
        await conn.close()


async def test_ray_reprocess_gives_the_prompt_code_diasources(
    night: Path, pg_dsn: str, ray_session: None
) -> None:
    from actors.reprocess import RayExecutor

    summary = await reprocess(config(pg_dsn, night, "ray", 1), RayExecutor(workers=2, niceness=0))
    assert summary.ccds == summary.processed == 8 and not summary.failed
    rows = await dia_sources(pg_dsn, "dr_ray")
    assert len(rows) == summary.dia_sources > 0
    assert {IdPacker.unpack(r["diaSourceId"]).release for r in rows} == {1}
    repo = await Repository.connect(pg_dsn, REGISTRY)
    units = await ccd_units(repo, DAY_OBS)
    await repo.close()
    for unit in units:
        prompt = ccd_work.process(unit.inputs, unit.visit_info, unit.detector, unit.raw_path)
        assert prompt["ok"], prompt["reason"]
        src = prompt["ccd"]["sources"]
        mine = sorted(
            (r for r in rows if (r["visit"], r["detector"]) == (unit.visit, unit.detector)),
            key=lambda r: r["ra"],
        )
        order = np.argsort(src["ra"])
        assert len(mine) == len(order)
        np.testing.assert_allclose([r["ra"] for r in mine], src["ra"][order], atol=1e-9)
        np.testing.assert_allclose([r["dec"] for r in mine], src["dec"][order], atol=1e-9)
        np.testing.assert_allclose([r["psfFlux"] for r in mine], src["psfFlux"][order], rtol=1e-6)


async def test_a_rerun_is_skipped_and_a_killed_run_resumes_to_the_same_outputs(
    night: Path, pg_dsn: str
) -> None:
    cfg = config(pg_dsn, night, "resume", 2)
    whole = await reprocess(cfg, InlineExecutor())
    assert whole.processed == 8 and whole.regions_run == whole.regions >= 1
    rows = await dia_sources(pg_dsn, "dr_resume")
    again = await reprocess(cfg, InlineExecutor())
    assert (again.processed, again.skipped, again.regions_run) == (0, 8, 0)
    assert again.checksum == whole.checksum

    task: asyncio.Task[Any] | None = None

    class KillAfterThree(Recorder):
        def progress(self, phase: str, done: int, total: int) -> None:
            super().progress(phase, done, total)
            if phase == "ccd" and done == 3 and task is not None:
                task.cancel()

    killer = KillAfterThree()
    clobber = ReprocessConfig(**{**cfg.__dict__, "clobber": True})
    task = asyncio.create_task(reprocess(clobber, InlineExecutor(), killer))
    with pytest.raises(asyncio.CancelledError):
        await task
    assert killer.ends == ["interrupted"]
    resumed = await reprocess(cfg, InlineExecutor())
    assert resumed.skipped >= 3 and resumed.processed == 8 - resumed.skipped
    assert resumed.dia_sources == whole.dia_sources
    assert resumed.checksum == whole.checksum
    assert await dia_sources(pg_dsn, "dr_resume") == rows
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    try:
        units = await (await Ledger.connect(pool)).units("resume")
    finally:
        await pool.close()
    assert {u.status for u in units} == {"done"} and len(units) == 8 + whole.regions + 1


async def test_release_ids_and_names_are_checked(night: Path, pg_dsn: str) -> None:
    with pytest.raises(InvalidInputError):
        config(pg_dsn, night, "Bad-Name", 3)
    with pytest.raises(InvalidInputError):
        config(pg_dsn, night, "zero", 0)
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    try:
        holder = await Ledger.connect(pool)
        await holder.begin_release("taken", 7, "dr_taken", "hash", {})
        with pytest.raises(InvalidInputError, match="clashes"):
            await reprocess(config(pg_dsn, night, "other", 7), InlineExecutor())
        with pytest.raises(InvalidInputError, match="no raws"):
            await reprocess(
                config(pg_dsn, night, "empty", 4, last_night=DAY_OBS).__class__(
                    **{**config(pg_dsn, night, "empty", 4).__dict__, "first_night": 20990101}
                ),
                InlineExecutor(),
            )
        await holder.lock("locked")
        with pytest.raises(CommandRejected):
            await reprocess(config(pg_dsn, night, "locked", 5), InlineExecutor())
        await holder.unlock("locked")
    finally:
        await pool.close()


async def test_catch_up_fills_the_gaps_of_injected_prompt_failures(
    night: Path, pg_dsn: str, tmp_path: Path
) -> None:
    from base.alerts import AlertArchive
    from base.apdb import Apdb
    from base.prompt.requests import CcdResults
    from base.reliability import alert_threshold, load_reliability_model
    from base.reprocess.associate import associate_ccd
    from base.reprocess.catchup import LATE, CatchUpConfig, catch_up
    from base.reprocess.plan import AssociationParams

    repo = await Repository.connect(pg_dsn, REGISTRY)
    await register_night(repo, night)
    units = await ccd_units(repo, DAY_OBS)
    await repo.close()
    lost = {units[3].key: "abandoned", units[6].key: "failed"}
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    apdb = await Apdb.connect(pg_dsn, "cu_apdb")
    expected = 0
    try:
        records = await PromptRecords.connect(pool, "cu_prompt")
        for info in {u.visit: u.visit_info for u in units}.values():
            await records.record_visit(
                VisitRecord(
                    visit=info["visit"],
                    day_obs=DAY_OBS,
                    camera="mini",
                    band=info["band"],
                    ra=info["ra"],
                    dec=info["dec"],
                    obs_mjd=info["startMjd"],
                    exposure_time=info["exposureTime"],
                    n_detectors=4,
                    field_id=info["fieldId"],
                )
            )
        for unit in units:  # prompt processing of the night, with two CCDs lost
            out = ccd_work.process(unit.inputs, unit.visit_info, unit.detector, unit.raw_path)
            expected += len(out["ccd"]["sources"]["ra"])
            if unit.key in lost:
                outcome = CcdOutcome(
                    unit.visit,
                    unit.detector,
                    1,
                    lost[unit.key],
                    failure_type="timeout",
                    reason="injected",
                )
            else:
                ccd = CcdResults.from_wire(out["ccd"])
                await associate_ccd(apdb, ccd, AssociationParams())
                outcome = CcdOutcome(unit.visit, unit.detector, 1, "processed")
            await records.record_outcome(outcome)
        cfg = CatchUpConfig(
            dsn=pg_dsn,
            night_dir=night,
            day_obs=DAY_OBS,
            archive_dir=tmp_path / "archive",
            registry_schema=REGISTRY,
            apdb_schema="cu_apdb",
            records_schema="cu_prompt",
            archive_schema="cu_alerts",
        )
        summary = await catch_up(cfg, InlineExecutor(workers=2))
        assert summary.missed == summary.recovered == 2 and not summary.failed
        rows = await dia_sources(pg_dsn, "cu_apdb")
        assert len(rows) == len({r["diaSourceId"] for r in rows}) == expected
        assert {IdPacker.unpack(r["diaSourceId"]).release for r in rows} == {0}
        caught = [r for r in rows if f"ccd:{r['visit']}/{r['detector']}" in lost]
        threshold = alert_threshold(load_reliability_model(), None)
        alertable = [
            r
            for r in caught
            if (r["diaObjectId"] or r["ssObjectId"]) and r["reliability"] >= threshold
        ]
        assert summary.alerts == len(alertable) > 0, "one alert per associated, reliable source"
        archive = await AlertArchive.open(pg_dsn, tmp_path / "archive", "cu_alerts")
        try:
            alert = await archive.fetch(caught[0]["diaSourceId"])
        finally:
            await archive.close()
        assert alert is not None and alert["observation_reason"] == LATE
        night_records = await records.fetch_night(DAY_OBS)
        assert {o.status for o in night_records.outcomes} == {"processed"}
        again = await catch_up(cfg, InlineExecutor())
        assert (again.missed, again.recovered, again.alerts) == (0, 0, 0)
        assert len(await dia_sources(pg_dsn, "cu_apdb")) == expected
    finally:
        await apdb.close()
        await pool.close()


async def _a_recorded_night(dsn: str, schema: str, day_obs: int, n_alerts: int) -> None:
    """One visit of ``day_obs`` in the prompt records, its CCD processed, ``n_alerts`` alerts."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        records = await PromptRecords.connect(pool, schema)
        visit = VisitRecord(7, day_obs, "mini", "r", 10.0, -5.0, 60800.1, 30.0, 1)
        await records.record_visit(visit)
        await records.record_outcome(CcdOutcome(7, 0, 1, "processed"))
        await records.record_alerts(7, 0, n_alerts, 60800.2)
    finally:
        await pool.close()


async def _schema_exists(dsn: str, name: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT to_regnamespace($1)", name) is not None
    finally:
        await conn.close()


def test_a_catch_up_that_names_no_night_is_refused_before_anything_starts(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a night the records lack, a mistyped or wrong --archive-dir, a --night-dir
    without a night each exited 0 having processed 0 CCDs, after starting Ray."""
    from click.testing import CliRunner

    import actors.reprocess
    from commands.cli import main

    def no_ray(*args: object) -> bool:
        raise AssertionError("Ray was started")

    monkeypatch.setattr(actors.reprocess, "start_ray", no_ray)
    day_obs = 20250507  # its own catch-up in the ledger
    asyncio.run(_a_recorded_night(pg_dsn, "nn_prompt", day_obs, 3))
    archive = tmp_path / "archive"
    archive.mkdir()
    common = ["reprocess", "--dsn", pg_dsn, "--catch-up", "--records-schema", "nn_prompt"]
    common += ["--registry-schema", "nn_registry", "--apdb-schema", "nn_apdb"]
    common += ["--archive-schema", "nn_alerts", "--niceness", "0"]  # in this process
    cases = [
        (["--night", "20250508", "--archive-dir", str(archive)], 1,
         "Error: InvalidInputError: no visit of night 20250508 in the prompt records (schema"
         " 'nn_prompt'): nothing to catch up"),
        (["--night", str(day_obs), "--archive-dir", str(archive), "--records-schema", "nn_promt"],
         1, "Error: InvalidInputError: no prompt records in schema 'nn_promt': nothing to catch"
         " up"),
        (["--night", str(day_obs), "--archive-dir", str(archive)], 1,
         f"Error: InvalidInputError: the alert archive {archive} has no alerts-{day_obs}.avro,"
         f" though prompt processing archived 3 alerts of night {day_obs}"),
        (["--night", str(day_obs), "--archive-dir", str(archive), "--night-dir", str(tmp_path)],
         1, f"Error: InvalidInputError: {tmp_path / 'manifest.json'} is not a simulated-night"
         " manifest"),
        (["--night", str(day_obs), "--archive-dir", str(tmp_path / "archiv")], 2,
         "Invalid value for '--archive-dir'"),
        (["--night", str(day_obs)], 2, "--catch-up needs --archive-dir"),
    ]  # fmt: skip
    for argv, code, said in cases:
        result = CliRunner().invoke(main, [*common, *argv])  # Ray, were it started: no_ray
        assert result.exit_code == code, result.output
        assert said in result.output, result.output
        assert "Traceback" not in result.output
        if code == 1:
            assert len(result.output.strip().splitlines()) == 1, result.output
    assert not asyncio.run(_schema_exists(pg_dsn, "nn_promt")), "the check created it"
    (archive / f"alerts-{day_obs}.avro").touch()  # the archive of that night: nothing missed
    result = CliRunner().invoke(main, [*common, "--night", str(day_obs), "--archive-dir",
                                       str(archive), "--local", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert (summary["missed"], summary["recovered"], summary["failed"]) == (0, 0, {})


async def dmcs(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "dmcs"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode()


async def test_cli_runs_a_release_and_reports_its_status(night: Path, pg_dsn: str) -> None:
    common = ["--dsn", pg_dsn, "--registry-schema", REGISTRY]
    rc, out = await dmcs(
        "reprocess",
        *common,
        "--night",
        str(DAY_OBS),
        "--night-dir",
        str(night),
        "--release",
        "cli",
        "--release-id",
        "6",
        "--local",
        "--json",
    )
    assert rc == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["processed"] == 8 and summary["schema"] == "dr_cli"
    rc, out = await dmcs("reprocess", "status", "--dsn", pg_dsn, "--json")
    assert rc == 0, out
    row = next(r for r in json.loads(out) if r["name"] == "cli")
    assert (row["status"], row["release_id"], row["failed"]) == ("done", 6, 0)
    rc, out = await dmcs("reprocess", "status", "cli", "--dsn", pg_dsn, "--json")
    assert rc == 0 and {u["status"] for u in json.loads(out)} == {"done"}
    rc, out = await dmcs(
        "reprocess",
        *common,
        "--night",
        str(DAY_OBS),
        "--night-dir",
        str(night),
        "--release",
        "cli",
        "--release-id",
        "7",
        "--local",
    )
    assert rc != 0 and "clashes" in out


async def test_a_bad_raw_fails_with_its_reason_and_a_later_run_completes_the_release(
    night: Path, pg_dsn: str, tmp_path: Path
) -> None:
    copy = tmp_path / "night"
    shutil.copytree(night / "raws", copy / "raws")
    bad = sorted(copy.glob("raws/*/*/raw_*.fits"))[5]
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 2])
    repo = await Repository.connect(pg_dsn, "rp_bad_registry")
    try:
        assert await register_night_raws(repo, copy) == 8
    finally:
        await repo.close()
    cfg = ReprocessConfig(
        dsn=pg_dsn,
        night_dir=night,
        release="bad",
        release_id=8,
        first_night=DAY_OBS,
        registry_schema="rp_bad_registry",
    )
    seen = Recorder()
    first = await reprocess(cfg, InlineExecutor(), seen)
    assert list(first.failed) == [f"ccd:{bad.parent.name}/{int(bad.stem[-3:])}"]
    assert seen.starts == [("bad", "release", 1)] and seen.ends == ["failed"]
    assert [(u, a, f) for u, _, a, f in seen.failures] == [(next(iter(first.failed)), 1, True)]
    assert seen.progress_of("ccd")[0] == (0, 8) and seen.progress_of("ccd")[-1] == (8, 8)
    assert seen.progress_of("region")[-1] == (first.regions, first.regions)
    assert "missing_amplifier" in next(iter(first.failed.values()))
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    try:
        ledger = await Ledger.connect(pool)
        failed = [u for u in await ledger.units("bad") if u.status == "failed"]
        assert len(failed) == 1 and failed[0].attempts == 1 and failed[0].reason
        assert [r["status"] for r in await ledger.releases() if r["name"] == "bad"] == ["failed"]
        bad.write_bytes(good)
        second = await reprocess(cfg, InlineExecutor())
        assert (second.processed, second.skipped, second.failed) == (1, 7, {})
        assert second.regions_run >= 1 and second.dia_sources > first.dia_sources
        assert {u.status for u in await ledger.units("bad")} == {"done"}
    finally:
        await pool.close()
