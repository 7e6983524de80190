"""CCD inputs read through the registry: resolution, the resolved repository and its checks
of each product against its registered checksum, and a night processed end to end by
CcdProcessors that read every input through the registry (products registered at a copy of
the night, some of them missing or unregistered).

Real PostgreSQL (``pg_dsn``), real Ray and gateway for the night; the simulated ``mini`` night
is the shared ``mini_night`` fixture.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from base.ccd_inputs import (
    CalibPaths,
    CcdRepository,
    NightDirectoryRepository,
    ResolvedInputs,
    ResolvedRepository,
)
from base.ccd_processing import CcdProcessing
from base.prompt import ccd_work
from base.prompt.registry_inputs import resolve_inputs
from base.registry.products import register_night
from base.registry.repository import Repository
from commands.client import Client
from commands.replay.night_system import (
    PROCESSOR_CLASS,
    register_products,
)
from commands.replay.runner import replay_night
from state.durable import sha256_hex
from state.errors import InvalidInputError
from state.states import State
from summit.schedule import Visit, read_schedule
from tests.conftest import TOKENS
from tests.test_night_e2e import counts, night_test_config

DETECTORS = (0, 1, 2, 3)


def _first_visit(night: Path) -> Visit:
    return read_schedule(night / "schedule.sqlite")[0]


def _info(v: Visit) -> dict[str, Any]:
    """The ``nextVisit`` payload fields the adapter reads (docs/events.md)."""
    return {"visit": v.visit_id, "camera": "mini", "band": v.band, "ra": v.ra, "dec": v.dec,
            "fieldId": v.field_id, "startMjd": v.mjd_start, "exposureTime": v.exptime,
            "dayObs": 20260101, "detectors": list(DETECTORS)}  # fmt: skip


@pytest.fixture(scope="module")
async def registered(pg_dsn: str, mini_night: Path) -> str:
    """A registry schema holding the products of ``mini_night``; returns its name."""
    repo = await Repository.connect(pg_dsn, "reginp_products")
    try:
        await register_night(repo, mini_night)
    finally:
        await repo.close()
    return "reginp_products"


async def test_resolution_finds_the_night_directory_paths(
    pg_dsn: str, mini_night: Path, registered: str
) -> None:
    night = NightDirectoryRepository(mini_night)
    v = _first_visit(mini_night)
    repo = await Repository.connect(pg_dsn, registered)
    try:
        for det in DETECTORS:
            raw = night.get_raw(v.visit_id, det)
            assert raw is not None
            inputs = await resolve_inputs(repo, _info(v), det, raw=str(raw))
            want = night.get_calibs(det, v.band, v.mjd_start)
            assert inputs.calibs == CalibPaths(
                **{f.name: getattr(want, f.name).resolve() for f in dataclasses.fields(want)}
            )
            template = night.get_template(v.field_id, v.band, det)
            assert template is not None and inputs.template == template.resolve()
            refcat = night.get_refcat()
            assert refcat is not None and inputs.refcat == refcat.resolve()
            assert inputs.raw == raw
        by_place = await resolve_inputs(repo, {**_info(v), "fieldId": None}, 2)
        assert by_place.template == inputs.template.parent / "det002.fits"  # type: ignore[union-attr]
        with pytest.raises(InvalidInputError, match="bad visit description"):
            await resolve_inputs(repo, {"visit": v.visit_id}, 2)
    finally:
        await repo.close()


async def test_resolved_repository_gives_the_same_diasources(
    pg_dsn: str, mini_night: Path, registered: str
) -> None:
    night = NightDirectoryRepository(mini_night)
    v = _first_visit(mini_night)
    det = 2
    raw = night.get_raw(v.visit_id, det)
    assert raw is not None
    repo = await Repository.connect(pg_dsn, registered)
    try:
        inputs = await resolve_inputs(repo, _info(v), det, raw=str(raw))
    finally:
        await repo.close()
    resolved = ResolvedRepository(inputs)
    assert isinstance(resolved, CcdRepository)
    outputs = []
    for source in (night, resolved):
        adapter = CcdProcessing(source)
        pre = adapter.preload(_info(v), det)
        assert pre.flags == []
        outputs.append(adapter.process(raw, pre))
    a, b = outputs
    assert a.ok and b.ok and a.reason == b.reason == ""
    assert len(a.diasources) > 0 and a.diasources.dtype == b.diasources.dtype
    for name in a.diasources.dtype.names or ():
        np.testing.assert_array_equal(a.diasources[name], b.diasources[name], err_msg=name)

    def figures(summary: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in summary.items() if not k.endswith("_s")}

    assert figures(a.summary) == figures(b.summary)


async def test_missing_registry_inputs_are_flagged_not_raised(
    pg_dsn: str, mini_night: Path
) -> None:
    night = NightDirectoryRepository(mini_night)
    v = _first_visit(mini_night)
    raw = night.get_raw(v.visit_id, 1)
    assert raw is not None
    repo = await Repository.connect(pg_dsn, "reginp_partial")
    try:
        empty = await resolve_inputs(repo, _info(v), 1, raw=str(raw))
        assert empty == ResolvedInputs(v.visit_id, 1, raw=raw)
        await register_night(repo, mini_night)
        conn = await asyncpg.connect(pg_dsn, server_settings={"search_path": "reginp_partial"})
        try:
            await conn.execute("DELETE FROM templates WHERE detector = 1")
        finally:
            await conn.close()
        no_template = await resolve_inputs(repo, _info(v), 1, raw=str(raw))
    finally:
        await repo.close()
    assert no_template.template is None and no_template.refcat is not None
    flags = CcdProcessing(ResolvedRepository(empty)).preload(_info(v), 1).flags
    assert {"missing_calib:bias", "no_template", "no_reference_catalog"} <= set(flags)
    ccd_work._preloaded.pop((v.visit_id, 1), None)
    out = ccd_work.process(no_template, _info(v), 1, str(raw))
    assert not out["ok"] and "no_template" in out["reason"]
    other = ResolvedRepository(no_template)
    assert other.get_raw(v.visit_id, 2) is None and other.get_calibs(2, "r", 0.0) == CalibPaths()


def test_the_worker_keeps_preloads_by_the_memory_they_hold(
    mini_night: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A processor preloads all its detectors at nextVisit (95 of lsstcam-lite's 189): the
    worker keeps them by the bytes they hold in its own memory: calibrations mapped from the
    input cache aside, templates (decoded at each preload) counted."""
    night, v = NightDirectoryRepository(mini_night), _first_visit(mini_night)

    def source(det: int) -> ResolvedInputs:
        return ResolvedInputs(
            v.visit_id, det, calibs=night.get_calibs(det, v.band, v.mjd_start),
            template=night.get_template(v.field_id, v.band, det), refcat=night.get_refcat(),
        )  # fmt: skip

    ccd_work._preloaded.clear()
    try:
        cache = (str(tmp_path / "cache"), 1 << 30)
        for det in DETECTORS:  # calibrations decoded into the cache, then kept as its mappings
            ccd_work.preload(source(det), _info(v), det, cache=cache)
        mapped = [held for _, held in ccd_work._preloaded.values()]
        assert len(mapped) == len(DETECTORS)
        assert all(2 * 512 * 512 * 4 < m < 4 * 512 * 512 * 4 for m in mapped), (
            "the template's image and variance count, the mapped calibrations do not",
            mapped,
        )
        ccd_work.preload(source(0), {**_info(v), "visit": v.visit_id + 1}, 0)  # decoded here
        own = ccd_work._preloaded[(v.visit_id + 1, 0)][1]
        assert own - max(mapped) > 3 * 512 * 512 * 4, (own, mapped)  # bias, dark, flat
        # Over the byte bound the oldest go first.
        later = {**_info(v), "visit": v.visit_id + 1}
        monkeypatch.setattr(ccd_work, "MAX_PRELOADED_BYTES", int(1.7 * own))
        ccd_work.preload(source(1), later, 1)
        assert list(ccd_work._preloaded) == [(v.visit_id + 1, 1)]
        ccd_work.preload(source(3), later, 3, cache=cache)
        assert list(ccd_work._preloaded) == [(v.visit_id + 1, 1), (v.visit_id + 1, 3)]
        monkeypatch.setattr(ccd_work, "MAX_PRELOADED", 2)  # and by their number
        ccd_work.preload(source(2), later, 2, cache=cache)
        assert list(ccd_work._preloaded) == [(v.visit_id + 1, 3), (v.visit_id + 1, 2)]
        raw = night.get_raw(v.visit_id, 2)
        out = ccd_work.process(source(2), later, 2, str(raw), cache=cache)
        assert "stages" in out and list(ccd_work._preloaded) == [(v.visit_id + 1, 3)]
    finally:
        ccd_work._preloaded.clear()


def test_the_worker_takes_registry_inputs_only(mini_night: Path) -> None:
    with pytest.raises(InvalidInputError, match="looked up in the registry"):
        ccd_work._adapter(str(mini_night))  # type: ignore[arg-type]
    inputs = ResolvedInputs(1, 2)
    assert ccd_work._adapter(inputs) is not ccd_work._adapter(inputs), "not cached"


def test_products_are_checked_against_their_registered_checksum(tmp_path: Path) -> None:
    bias = tmp_path / "bias.fits"
    bias.write_bytes(b"a" * 4096)
    inputs = ResolvedInputs(
        1, 2, calibs=CalibPaths(bias=bias), checksums=((str(bias), sha256_hex(bias.read_bytes())),)
    )
    repo = ResolvedRepository(inputs)
    assert repo.get_calibs(2, "r", 0.0).bias == bias
    assert repo.get_calibs(2, "r", 0.0).bias == bias, "verified once, then remembered"
    bias.write_bytes(b"b" * 4096)
    st = bias.stat()
    os.utime(bias, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.raises(InvalidInputError, match=r"bias\.fits is corrupt"):
        repo.get_calibs(2, "r", 0.0)
    bias.unlink()
    with pytest.raises(InvalidInputError, match=r"bias\.fits cannot be read"):
        repo.get_calibs(2, "r", 0.0)
    assert repo.get_calibs(1, "r", 0.0) == CalibPaths(), "another detector's: nothing to check"
    unchecked = ResolvedRepository(ResolvedInputs(1, 2, template=tmp_path / "t.fits"))
    assert unchecked.get_template(0, "r", 2) == tmp_path / "t.fits", "no checksum, no check"


async def test_processors_read_a_night_through_the_registry(
    system_factory: Any, pg_dsn: str, mini_night: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The products are registered at a copy of the night: detector 3's templates are then
    deleted from the copy (still in the night directory), detector 1's from the registry."""
    prefix = "reginp_e2e_"
    copy = tmp_path_factory.mktemp("reginp_products") / "night"
    shutil.copytree(mini_night, copy, ignore=shutil.ignore_patterns("raws"))
    staging = tmp_path_factory.mktemp("reginp_staging")
    config = night_test_config(pg_dsn, prefix, staging)
    pool = [c for c in config.components if c.cls == PROCESSOR_CLASS]
    assert pool and all("night_dir" not in c.settings for c in pool)
    added = await register_products(config, copy)
    assert added["refcats"] == 1 and added["templates"] > 0
    assert (await register_products(config, copy))["templates"] == 0, "registered once"
    gone = sorted(copy.glob("templates/*/*/det003.fits"))
    assert gone
    for path in gone:
        path.unlink()
        assert (mini_night / path.relative_to(copy)).is_file()
    conn = await asyncpg.connect(pg_dsn, server_settings={"search_path": f"{prefix}registry"})
    try:
        await conn.execute("DELETE FROM templates WHERE detector = 1")
    finally:
        await conn.close()
    running = await system_factory(*(c.model_dump(by_alias=True) for c in config.components))
    async with Client(running.ws_url, token=TOKENS["ocs"]) as client:
        outcome = await replay_night(client, mini_night, staging, speed=20.0, drain_seconds=180)
        await client.set_system_state(State.STANDBY)
    p = outcome.progress
    assert outcome.complete, p
    assert p.finished == p.expected and {d for _, d in p.failed} == {1, 3}, p.failed
    assert p.processed == {c for c in p.expected if c[1] in (0, 2)} and p.alerts > 0
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(
            f'SELECT visit, detector, status, reason FROM "{prefix}prompt".ccd_outcome'
            " WHERE detector IN (1, 3) AND visit = ANY($1::bigint[])",
            outcome.visits,
        )
    finally:
        await conn.close()
    reasons = {r["detector"]: set() for r in rows}
    for r in rows:
        assert r["status"] == "failed", dict(r)
        reasons[r["detector"]].add(r["reason"])
    assert len(rows) == len(p.failed)
    assert all("no_template" in r for r in reasons[1]), reasons
    assert all(
        "template_unreadable" in r and "det003.fits cannot be read" in r for r in reasons[3]
    ), reasons
    found = await counts(pg_dsn, prefix, outcome.visits)
    assert found["alertableDiaSources"] == found["alerts"] == p.alerts
