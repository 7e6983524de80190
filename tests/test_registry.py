"""The registry on a real PostgreSQL: migrations, the simulated night's products, lookups."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
from pathlib import Path

import asyncpg
import pytest

from base.ccd_inputs import ResolvedRepository
from base.db import connect_pool, migrate
from base.prompt.registry_inputs import resolve_inputs
from base.registry import DetectorRecord, ExposureRecord, RawRecord, Repository
from base.registry.products import register_night
from base.registry.schema import STORE
from commands.database import database_users, system_database
from config.system import SystemConfig
from state.errors import ConnectionLostError, InvalidInputError, StorageError
from tests.conftest import component_spec
from tests.data_path_helpers import mini_night_dir


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mini_night_dir(tmp_path_factory.getbasetemp())


async def _versions(dsn: str, schema: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            f'SELECT version FROM "{schema}".schema_version WHERE component = $1 ORDER BY version',
            "registry",
        )
    finally:
        await conn.close()
    return [r["version"] for r in rows]


async def test_migrations_are_versioned_and_applied_once(pg_dsn: str) -> None:
    repo = await Repository.connect(pg_dsn, "reg_migrate")
    try:
        again = await Repository.connect(pg_dsn, "reg_migrate")
        await again.close()
    finally:
        await repo.close()
    assert await _versions(pg_dsn, "reg_migrate") == [m.version for m in STORE.migrations]


async def test_migration_2_upgrades_a_version_1_schema(pg_dsn: str, night: Path) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        v1 = dataclasses.replace(STORE, migrations=STORE.migrations[:1])
        assert await migrate(conn, "reg_upgrade", v1) == [1]
    finally:
        await conn.close()
    old = Repository(await connect_pool(pg_dsn, search_path="reg_upgrade"), "reg_upgrade")
    try:
        assert await old.register_detector(DetectorRecord("mini", 0, "S00", None, 2, 2))
        with pytest.raises(StorageError, match="refcats"):
            await old.get_refcat("mini")
    finally:
        await old.close()
    repo = await Repository.connect(pg_dsn, "reg_upgrade")
    try:
        assert await _versions(pg_dsn, "reg_upgrade") == [1, 2, 3]
        assert (await repo.counts())["detectors"] == 1, "version 1 rows survive the upgrade"
        assert await register_night(repo, night) == {
            "detectors": 3, "calibrations": 4 * 5, "templates": 12, "refcats": 1, "replaced": 0,
            "refused": 0,
        }  # fmt: skip
        assert await repo.get_refcat("mini") is not None
    finally:
        await repo.close()


async def test_a_registry_of_the_old_migration_table_is_adopted(pg_dsn: str) -> None:
    """A registry created before base.db (versions in registry_migrations) is upgraded."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("CREATE SCHEMA reg_legacy")
        await conn.execute(STORE.migrations[0].render("reg_legacy"))
        await conn.execute(
            "CREATE TABLE reg_legacy.registry_migrations (version INTEGER PRIMARY KEY,"
            " name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        await conn.execute("INSERT INTO reg_legacy.registry_migrations VALUES (1, 'first')")
    finally:
        await conn.close()
    repo = await Repository.connect(pg_dsn, "reg_legacy")
    try:
        assert await repo.get_refcat("mini") is None, "migration 2 was applied"
    finally:
        await repo.close()
    assert await _versions(pg_dsn, "reg_legacy") == [1, 2, 3]


async def test_night_products_registered_once_and_found(pg_dsn: str, night: Path) -> None:
    repo = await Repository.connect(pg_dsn, "reg_products")
    try:
        added = await register_night(repo, night)
        assert added == {
            "detectors": 4, "calibrations": 4 * 5, "templates": 12, "refcats": 1, "replaced": 0,
            "refused": 0,
        }  # fmt: skip
        assert await register_night(repo, night) == {
            "detectors": 0, "calibrations": 0, "templates": 0, "refcats": 0, "replaced": 0,
            "refused": 0,
        }  # fmt: skip
        refcat = await repo.get_refcat("mini")
        assert refcat is not None and refcat.name == "truth"
        assert refcat.path == str((night / "truth.sqlite").resolve())
        assert refcat.byte_size == (night / "truth.sqlite").stat().st_size
        assert refcat.n_objects is not None and refcat.n_objects > 0
        assert await repo.get_refcat("mini", name="truth") == refcat
        assert await repo.get_refcat("mini", name="gaia") is None
        assert await repo.get_refcat("lsstcam") is None
        calibs = await repo.get_calibs(2, "r", 60800.9)
        assert set(calibs) == {"bias", "dark", "bpm", "flat", "crosstalk"}
        assert calibs["flat"].band == "r" and calibs["flat"].nx == 512
        assert Path(calibs["bias"].path).is_file()
        assert await repo.get_calibs(2, "g", 60800.9, camera="mini") == {
            k: v for k, v in calibs.items() if k != "flat"
        }
        by_field = await repo.get_template("r", field_id=1)
        assert [t.detector for t in by_field] == [0, 1, 2, 3]
        one = await repo.get_template("r", field_id=1, detector=2)
        assert len(one) == 1 and one[0].nx is not None and one[0].nx > 512
        near = await repo.get_template("r", ra=one[0].ra + 0.01, dec=one[0].dec, detector=2)
        assert near == one
        assert await repo.get_template("r", ra=one[0].ra + 30, dec=one[0].dec) == []
        assert await repo.get_template("u", field_id=1) == []
        with pytest.raises(InvalidInputError, match="needs field_id"):
            await repo.get_template("r")
        assert await repo.get_raw(1, 0) is None
        assert (await repo.counts())["templates"] == 12
        assert (await repo.counts())["refcats"] == 1
    finally:
        await repo.close()


async def test_a_night_moved_elsewhere_is_re_pointed_not_duplicated(
    pg_dsn: str, night: Path, tmp_path: Path
) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(night, moved, ignore=shutil.ignore_patterns("raws"))
    repo = await Repository.connect(pg_dsn, "reg_moved")
    try:
        await register_night(repo, night)
        before = await repo.counts()
        again = await register_night(repo, moved)
        assert again == {
            "detectors": 0, "calibrations": 0, "templates": 0, "refcats": 0,
            "replaced": 4 * 5 + 12 + 1, "refused": 0,
        }  # fmt: skip
        assert await repo.counts() == before
        assert (await register_night(repo, moved))["replaced"] == 0
        refcat = await repo.get_refcat("mini")
        assert refcat is not None and refcat.path == str((moved / "truth.sqlite").resolve())
        (template,) = await repo.get_template("r", field_id=1, detector=2)
        assert template.path.startswith(str(moved.resolve()))
    finally:
        await repo.close()


async def test_detectors_of_one_exposure_register_concurrently(pg_dsn: str) -> None:
    repo = await Repository.connect(pg_dsn, "reg_concurrent")
    exposure = ExposureRecord(7, "MN_O_1_000007", "mini", 1, 7, "r", 30.0, 1.0, 2.0, 3.0, 4)

    def raw(d: int) -> RawRecord:
        return RawRecord(
            7, d, "mini", "MN_O_1_000007", f"/r{d}", "a" * 64, "b" * 64, 1, 2, 2, 1, False
        )

    def det(d: int) -> DetectorRecord:
        return DetectorRecord("mini", d, f"S{d}", None, 2, 2)

    try:
        added = await asyncio.gather(
            *(repo.register_raw(raw(d), exposure, det(d)) for d in range(9))
        )
        assert added == [True] * 9
        assert not await repo.register_raw(raw(0), exposure, det(0))
        counts = await repo.counts()
        assert (counts["exposures"], counts["raws"], counts["detectors"]) == (1, 9, 9)
    finally:
        await repo.close()


async def test_not_a_night_is_refused(pg_dsn: str, tmp_path: Path) -> None:
    repo = await Repository.connect(pg_dsn, "reg_products_bad")
    try:
        with pytest.raises(InvalidInputError, match="not a simulated-night manifest"):
            await register_night(repo, tmp_path)
    finally:
        await repo.close()


async def test_unreachable_database_is_retriable(tmp_path: Path) -> None:
    dsn = f"postgresql://postgres:@/postgres?host={tmp_path}"
    with pytest.raises(ConnectionLostError, match="unavailable"):
        await Repository.connect(dsn)


def test_system_database_fills_the_dsn_of_database_users(tmp_path: Path) -> None:
    config = SystemConfig.model_validate(
        {
            "data_dir": tmp_path,
            "database": {"dsn": "postgresql://db.example/dmcs"},
            "components": [
                component_spec("Ingest", "base.ingest:Ingest"),
                component_spec("Other", "base.ingest:Ingest", settings={"dsn": "given"}),
                component_spec("HeaderService", "summit.header_service:HeaderService"),
            ],
        }
    )
    assert database_users(config) == ["Ingest"]
    with system_database(config) as wired:
        settings = {c.name: c.settings for c in wired.components}
    assert settings["Ingest"]["dsn"] == "postgresql://db.example/dmcs"
    assert settings["Other"]["dsn"] == "given"
    assert "dsn" not in settings["HeaderService"]


async def test_cli_registers_a_nights_products_once(pg_dsn: str, mini_night: Path) -> None:
    from tests.test_reprocess import dmcs

    args = ("simulate", "register", str(mini_night), "--dsn", pg_dsn)
    rc, out = await dmcs(*args, "--registry-schema", "cli_products")
    assert rc == 0, out
    first = json.loads(out.strip().splitlines()[-1])["registered"]
    assert first["calibrations"] > 0 and first["templates"] > 0 and first["refcats"] == 1
    rc, out = await dmcs(*args, "--registry-schema", "cli_products")
    assert rc == 0 and set(json.loads(out.strip().splitlines()[-1])["registered"].values()) == {0}
    rc, out = await dmcs("simulate", "register", str(mini_night / "absent"), "--dsn", pg_dsn)
    assert rc == 2 and "does not exist" in out


async def test_a_corrupt_or_unreadable_product_is_refused_and_the_rest_registered(
    pg_dsn: str, night: Path, tmp_path: Path
) -> None:
    """One corrupt template and one unreadable bias used to fail the whole registration (and
    so the whole replay). Each is refused with its reason, the rest is registered, and a CCD
    that needs one is told why it cannot have it; a repaired file is taken at the next run."""
    copy = tmp_path / "night"
    shutil.copytree(night, copy, ignore=shutil.ignore_patterns("raws"))
    bias = copy / "calibs" / "det001" / "bias.fits"
    bias.unlink()
    bias.mkdir()  # a path that cannot be read as a file
    template = copy / "templates" / "r" / "field0001" / "det002.fits"
    template.write_bytes(b"SIMPLE  = not a FITS file" * 10)
    repo = await Repository.connect(pg_dsn, "reg_refused")
    try:
        added = await register_night(repo, copy)
        assert added == {
            "detectors": 4, "calibrations": 4 * 5 - 1, "templates": 12 - 1, "refcats": 1,
            "replaced": 0, "refused": 2,
        }  # fmt: skip
        calibs = await repo.get_calibs(1, "r", 60800.9, camera="mini")
        assert "cannot be read" in (calibs["bias"].refused or "")
        assert calibs["flat"].refused is None
        (record,) = await repo.get_template("r", field_id=1, detector=2)
        assert "is not a readable FITS product" in (record.refused or "")
        visit = {"visit": 1, "camera": "mini", "band": "r", "startMjd": 60800.9, "fieldId": 1}
        bad_bias = ResolvedRepository(await resolve_inputs(repo, visit, 1))
        with pytest.raises(
            InvalidInputError, match=r"registration refused: .*bias\.fits cannot be read"
        ):
            bad_bias.get_calibs(1, "r", 60800.9)
        bad_template = ResolvedRepository(await resolve_inputs(repo, visit, 2))
        with pytest.raises(InvalidInputError, match=r"registration refused: .*not a readable FITS"):
            bad_template.get_template(1, "r", 2)
        assert bad_template.get_calibs(2, "r", 60800.9).bias is not None
        bias.rmdir()
        shutil.copyfile(night / "calibs" / "det001" / "bias.fits", bias)
        repaired = await register_night(repo, copy)
        assert (repaired["replaced"], repaired["refused"]) == (1, 1)
        fixed = await repo.get_calibs(1, "r", 60800.9, camera="mini")
        assert fixed["bias"].refused is None and fixed["bias"].nx is not None
    finally:
        await repo.close()
