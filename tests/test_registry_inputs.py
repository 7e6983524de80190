"""CCD inputs read through the registry: resolution, the resolved repository, and a night
processed end to end by CcdProcessors that have no night directory.

Real PostgreSQL (``pg_dsn``), real Ray and gateway for the night; the simulated ``mini`` night
is the shared ``mini_night`` fixture.
"""

from __future__ import annotations

import dataclasses
import json
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
from commands.replay.night_system import PROCESSOR_CLASS, night_system_config
from commands.replay.runner import replay_night
from config.system import load_system_config
from state.errors import InvalidInputError
from state.states import State
from summit.schedule import Visit, read_schedule
from tests.conftest import TOKENS
from tests.test_night_e2e import counts

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


def test_night_directory_adapters_are_bounded(tmp_path: Path) -> None:
    dirs = []
    for i in range(ccd_work.MAX_ADAPTERS + 2):
        d = tmp_path / f"n{i}"
        d.mkdir()
        (d / "manifest.json").write_text(json.dumps({"camera": "mini"}))
        dirs.append(str(d))
    for d in dirs:
        ccd_work._adapter(d)
    assert list(ccd_work._adapters)[-ccd_work.MAX_ADAPTERS :] == dirs[-ccd_work.MAX_ADAPTERS :]
    assert len(ccd_work._adapters) <= ccd_work.MAX_ADAPTERS
    inputs = ResolvedInputs(1, 2)
    assert ccd_work._adapter(inputs) is not ccd_work._adapter(inputs), "not cached"
    assert len(ccd_work._adapters) <= ccd_work.MAX_ADAPTERS


async def test_processors_without_night_dir_process_a_night(
    system_factory: Any, pg_dsn: str, mini_night: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    prefix = "reginp_e2e_"
    repo = await Repository.connect(pg_dsn, f"{prefix}registry")
    try:
        added = await register_night(repo, mini_night)
    finally:
        await repo.close()
    assert added["refcats"] == 1 and added["templates"] > 0
    config = night_system_config(
        load_system_config(),
        dsn=pg_dsn,
        night_dir=None,
        processors=2,
        processor_cpus=0,
        schema_prefix=prefix,
    )
    pool = [c for c in config.components if c.cls == PROCESSOR_CLASS]
    assert pool and all(c.settings["night_dir"] == "" for c in pool)
    running = await system_factory(*(c.model_dump(by_alias=True) for c in config.components))
    staging = tmp_path_factory.mktemp("reginp_staging")
    async with Client(running.ws_url, token=TOKENS["ocs"]) as client:
        outcome = await replay_night(client, mini_night, staging, speed=20.0, drain_seconds=180)
        await client.set_system_state(State.STANDBY)
    p = outcome.progress
    assert outcome.complete, p
    assert p.finished == p.expected and p.processed == p.expected, p.failed
    assert not p.failed and p.alerts > 0
    found = await counts(pg_dsn, prefix, outcome.visits)
    assert found["alertableDiaSources"] == found["alerts"] == p.alerts
