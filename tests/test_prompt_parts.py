"""The prompt-processing parts that need neither Ray nor a database."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from base.isolated import IsolatedWorker, RemoteError, WorkerDiedError, WorkTimeoutError
from base.prompt.requests import CcdResults
from base.prompt.visit_tracker import VisitTracker
from base.prompt.work_queue import WorkQueue
from commands.replay.night_system import PROCESSOR_CLASS, night_system_config, registry_schemas
from config.system import load_system_config
from state.errors import ConfigurationError, InvalidInputError


def test_work_queue_survives_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "work.sqlite"
    q = WorkQueue(path)
    q.remember_visit(7, {"band": "r"})
    assert q.enqueue(8, 1) and q.enqueue(7, 2) and q.enqueue(7, 1)
    assert not q.enqueue(7, 1), "a repeated imageIngested adds no work"
    first = q.next()
    assert first is not None and (first.visit, first.detector) == (7, 1)
    running = q.start(first)
    assert running.attempts == 1
    q.close()  # the process dies with the CCD running

    q = WorkQueue(path)
    assert q.visit_info(7) == {"band": "r"}
    assert [(i.visit, i.detector) for i in q.recover()] == [(7, 1)]
    again = q.next()
    assert again is not None and (again.visit, again.detector, again.attempts) == (7, 1, 1)
    q.finish(q.start(again), "done")
    assert q.counts() == {"done": 1, "queued": 2}
    with pytest.raises(ValueError, match="unknown work state"):
        q.finish(again, "bogus")


async def test_isolated_worker_answers_times_out_and_recovers() -> None:
    worker = IsolatedWorker("test")
    try:
        assert await worker.run("math:sqrt", 16.0, timeout=60) == 4.0
        pid = worker.pid
        with pytest.raises(WorkTimeoutError, match="within 1 s"):
            await worker.run("time:sleep", 30, timeout=1)
        assert await worker.run("math:sqrt", 9.0, timeout=60) == 3.0
        assert worker.pid != pid, "the hung child was replaced"
        with pytest.raises(RemoteError, match="math domain error"):
            await worker.run("math:sqrt", -1.0, timeout=60)
        with pytest.raises(WorkerDiedError):
            await worker.run("os:_exit", 3, timeout=60)
        with pytest.raises(ConfigurationError):
            await worker.run("no-colon", timeout=1)
    finally:
        worker.close()


def _ccd(**changes: object) -> dict[str, object]:
    n = 3
    wire: dict[str, object] = {
        "visit": 1,
        "detector": 2,
        "band": "r",
        "day_obs": 20260101,
        "midpoint_mjd": 60800.1,
        "footprint_ra": (10.0, 10.1, 10.1, 10.0),
        "footprint_dec": (-5.0, -5.0, -4.9, -4.9),
        "sources": {
            "diaSourceId": np.arange(1, n + 1, dtype=np.int64),
            "ra": np.full(n, 10.05),
            "dec": np.full(n, -4.95),
            "midpointMjdTai": np.full(n, 60800.1),
            "psfFlux": np.ones(n),
            "psfFluxErr": np.ones(n),
        },
        "cutouts": [],
    }
    wire.update(changes)
    return wire


def test_ccd_results_validation() -> None:
    assert CcdResults.from_wire(_ccd()).visit == 1
    bad_ra = _ccd()
    bad_ra["sources"] = {**bad_ra["sources"], "ra": np.array([1.0, math.nan, 2.0])}  # type: ignore[dict-item]
    cases = {
        "non-finite ra": bad_ra,
        "lack columns": _ccd(sources={"ra": np.zeros(1)}),
        "cutouts for": _ccd(cutouts=[(b"", b"", b"")]),
        "stages.teleport": _ccd(stages={"teleport": 1.0}),
        "'unexpected': Extra inputs": {**_ccd(), "unexpected": 1},
        "'visit': Input should be a valid integer": _ccd(visit="1"),
        "'midpoint_mjd': Input should be a finite": _ccd(midpoint_mjd=math.inf),
        "'sources': Value error, columns differ": _ccd(sources={"ra": [1.0], "dec": [1.0, 2.0]}),
    }
    for message, wire in cases.items():
        with pytest.raises(InvalidInputError, match=message):
            CcdResults.from_wire(wire)


def test_visit_tracker_reports_once_when_every_ccd_ended() -> None:
    t = VisitTracker(budget_seconds=60.0)
    t.expect(5, [0, 1, 2])
    assert t.published(5, 0, 10, 12.0) is None
    assert t.failed(5, 1) is None
    done = t.published(5, 2, 4, 30.0)
    assert done is not None
    assert (done.n_alerts, done.n_failed, done.latency_seconds) == (14, 1, 30.0)
    assert not done.within_budget, "a visit with a failed CCD is not complete in time"
    assert t.published(5, 2, 4, 31.0) is None, "reported once"


def test_night_system_config_builds_the_pool() -> None:
    base = load_system_config()
    config = night_system_config(base, dsn="postgresql://x", processors=3)
    pool = [c for c in config.components if c.cls == PROCESSOR_CLASS]
    assert [c.name for c in pool] == ["CcdProcessor0", "CcdProcessor1", "CcdProcessor2"]
    assert [c.settings["index"] for c in pool] == [0, 1, 2]
    assert all(c.settings["pool_size"] == 3 and c.settings["dsn"] for c in pool)
    assert all("night_dir" not in c.settings for c in pool), "inputs come from the registry"
    assert registry_schemas(config) == ["registry"]
    renamed = night_system_config(base, dsn="postgresql://x", processors=2, schema_prefix="n1_")
    assert registry_schemas(renamed) == ["n1_registry"]
    with pytest.raises(ConfigurationError, match="at least one"):
        night_system_config(base, dsn="x", processors=0)
