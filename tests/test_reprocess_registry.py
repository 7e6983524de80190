"""A release reads every input through the registry: the products' registered locations are
the ones read, and a product missing from it, gone from disk or changed since it was
registered fails its CCDs with that reason (never the run). Real PostgreSQL, the ``mini``
night of the shared ``mini_night`` fixture; the products are copies, so that fixture is
never touched."""

from __future__ import annotations

import shutil
from pathlib import Path

import asyncpg
import pytest

from base.registry import Repository
from base.registry.products import register_night
from base.reprocess.executor import InlineExecutor
from base.reprocess.plan import ccd_units
from base.reprocess.runner import ReprocessConfig, reprocess
from state.errors import InvalidInputError
from tests.test_reprocess import DAY_OBS, Recorder, register_raws

REGISTRY = "rpreg_registry"


def _products(night: Path, to: Path) -> Path:
    shutil.copytree(night, to, ignore=shutil.ignore_patterns("raws"))
    return to


def _config(dsn: str, release: str, release_id: int, **kw: object) -> ReprocessConfig:
    return ReprocessConfig(
        dsn=dsn,
        release=release,
        release_id=release_id,
        first_night=DAY_OBS,
        registry_schema=REGISTRY,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
async def moved(pg_dsn: str, mini_night: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The night's raws registered, and its products registered at one place, then
    re-registered at another; the first place is gone."""
    await register_raws(pg_dsn, mini_night, REGISTRY)
    first = _products(mini_night, tmp_path_factory.mktemp("rpreg") / "first")
    second = _products(mini_night, first.parent / "second")
    repo = await Repository.connect(pg_dsn, REGISTRY)
    try:
        added = await register_night(repo, first)
        products = added["calibrations"] + added["templates"] + added["refcats"]
        assert added["templates"] > 0 and added["refcats"] == 1
        again = await register_night(repo, second)
        assert again["replaced"] == products and again["templates"] == 0
    finally:
        await repo.close()
    shutil.rmtree(first)
    return second


async def test_a_release_reads_the_products_where_the_registry_points(
    pg_dsn: str, moved: Path
) -> None:
    repo = await Repository.connect(pg_dsn, REGISTRY)
    try:
        units = await ccd_units(repo, DAY_OBS)
    finally:
        await repo.close()
    assert len(units) == 8
    for unit in units:
        paths = [p for p, _ in unit.inputs.checksums]
        assert len(paths) == 7, "bias, dark, flat, bpm, crosstalk, template, refcat"
        assert all(p.startswith(str(moved.resolve())) for p in paths)
    summary = await reprocess(_config(pg_dsn, "rpreg", 27), InlineExecutor())
    assert summary.processed == 8 and not summary.failed and summary.dia_sources > 0
    with pytest.raises(InvalidInputError, match="not a simulated-night manifest"):
        bad = _config(pg_dsn, "rpreg_bad", 28, night_dir=moved / "calibs")
        await reprocess(bad, InlineExecutor())


async def test_missing_unregistered_or_changed_products_fail_their_ccds_with_the_reason(
    pg_dsn: str, moved: Path
) -> None:
    (moved / "calibs" / "det001" / "bias.fits").unlink()
    for template in moved.glob("templates/*/*/det002.fits"):
        blob = bytearray(template.read_bytes())
        blob[-100] ^= 0xFF
        template.write_bytes(bytes(blob))
    conn = await asyncpg.connect(pg_dsn, server_settings={"search_path": REGISTRY})
    try:
        await conn.execute("DELETE FROM templates WHERE detector = 3")
    finally:
        await conn.close()
    seen = Recorder()
    summary = await reprocess(_config(pg_dsn, "rpreg_broken", 29), InlineExecutor(), seen)
    assert summary.processed == 2 and seen.ends == ["failed"]
    by_detector: dict[int, set[str]] = {}
    for key, reason in summary.failed.items():
        by_detector.setdefault(int(key.rsplit("/", 1)[1]), set()).add(reason)
    assert sorted(by_detector) == [1, 2, 3], "detector 0's products are all in order"
    assert all(
        r.startswith("calibs_unreadable:") and "det001/bias.fits cannot be read" in r
        for r in by_detector[1]
    ), by_detector[1]
    assert all("det002.fits is corrupt" in r for r in by_detector[2]), by_detector[2]
    assert by_detector[3] == {"no_template"}
    assert {(u, f) for u, _, _, f in seen.failures} == {(k, True) for k in summary.failed}


async def test_a_night_without_raws_is_named_in_the_refusal(pg_dsn: str, moved: Path) -> None:
    config = ReprocessConfig(
        dsn=pg_dsn, release="rpreg_none", release_id=30, first_night=20990101,
        registry_schema=REGISTRY,
    )  # fmt: skip
    with pytest.raises(InvalidInputError, match=r"^no raws of night 20990101 in the registry$"):
        await reprocess(config, InlineExecutor())
