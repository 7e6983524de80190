"""The dashboard's fold of batch reprocessing telemetry (``Reprocess`` reprocessProgress and
reprocessFailure, docs/events.md) without a server: the fold, its bounds, staleness, and
malformed payloads counted by the Dashboard."""

from __future__ import annotations

from typing import Any

import pytest

from commands.dashboard.batch import MAX_REASON, BatchLimits, BatchRuns
from commands.dashboard.service import Dashboard
from commands.status import StatusBoard
from state.events import REPROCESS_SOURCE, Event
from tests.test_dashboard_model import Sink


def progress(run: str = "dr1", **over: Any) -> dict[str, Any]:
    data = {"run": run, "mode": "release", "phase": "ccd", "done": 3, "total": 10, "failed": 0,
            "ratePerSecond": 1.5, "etaSeconds": 4.7, "status": "running", "startedTai": 90.0,
            "workers": 2}  # fmt: skip
    return {**data, **over}


def failure(run: str = "dr1", **over: Any) -> dict[str, Any]:
    data = {"run": run, "unit": "ccd:7001/4", "reason": "PsfFitError: no stars", "attempt": 1,
            "final": False}  # fmt: skip
    return {**data, **over}


def ev(topic: str, data: dict[str, Any], tai: float, seq: int = 1) -> Event:
    return Event(REPROCESS_SOURCE, topic, seq, tai, data, "telemetry")


def runs_by_name(batch: BatchRuns, now: float = 0.0) -> dict[str, dict[str, Any]]:
    return {r["run"]: r for r in batch.to_json(now)["runs"]}


def test_latest_progress_and_failures_newest_first() -> None:
    batch = BatchRuns()
    batch.observe(ev("reprocessProgress", progress(done=1), tai=100.0))
    batch.observe(ev("reprocessFailure", failure(attempt=1), tai=101.0))
    batch.observe(ev("reprocessFailure", failure(attempt=2, final=True), tai=102.0))
    batch.observe(ev("reprocessProgress", progress(done=5, failed=1), tai=103.0))
    run = runs_by_name(batch, now=104.0)["dr1"]
    assert (run["done"], run["total"], run["failed"], run["status"]) == (5, 10, 1, "running")
    assert (run["progressTai"], run["updatedTai"], run["stale"]) == (103.0, 103.0, False)
    assert [(f["attempt"], f["final"], f["tai"]) for f in run["failures"]] == [
        (2, True, 102.0),
        (1, False, 101.0),
    ]
    assert run["failures"][0]["reason"] == "PsfFitError: no stars"


def test_a_later_success_keeps_the_failure_record_and_failed_comes_from_progress() -> None:
    batch = BatchRuns()
    batch.observe(ev("reprocessFailure", failure(unit="ccd:5/1", attempt=1), tai=100.0))
    batch.observe(ev("reprocessProgress", progress(done=10, total=10, status="done"), tai=101.0))
    run = runs_by_name(batch, now=500.0)["dr1"]
    assert run["failed"] == 0 and [f["unit"] for f in run["failures"]] == ["ccd:5/1"]
    assert not run["stale"]  # done, however old


def test_a_failure_before_any_progress_makes_a_run_without_progress() -> None:
    batch = BatchRuns()
    batch.observe(ev("reprocessFailure", failure(run="catchup-20261121", unit="region:12"), 50.0))
    run = runs_by_name(batch, now=51.0)["catchup-20261121"]
    assert run["done"] is None and run["status"] is None and run["updatedTai"] == 50.0
    assert run["failures"][0]["unit"] == "region:12"


def test_a_late_progress_does_not_overwrite_a_newer_one() -> None:
    batch = BatchRuns()
    batch.observe(ev("reprocessProgress", progress(done=8), tai=200.0))
    batch.observe(ev("reprocessProgress", progress(done=7), tai=199.0))  # reordered by the bus
    run = runs_by_name(batch)["dr1"]
    assert (run["done"], run["progressTai"], run["updatedTai"]) == (8, 200.0, 200.0)


def test_runs_and_failures_are_bounded() -> None:
    batch = BatchRuns(BatchLimits(runs=3, failures_per_run=4))
    for i in range(6):
        batch.observe(ev("reprocessProgress", progress(run=f"r{i}"), tai=100.0 + i))
    assert [r["run"] for r in batch.to_json(106.0)["runs"]] == ["r5", "r4", "r3"]
    batch.observe(ev("reprocessProgress", progress(run="r3", done=4), tai=110.0))
    assert [r["run"] for r in batch.to_json(111.0)["runs"]] == ["r3", "r5", "r4"]
    for attempt in range(1, 11):
        batch.observe(ev("reprocessFailure", failure(run="r4", attempt=attempt), tai=120.0))
    failures = runs_by_name(batch)["r4"]["failures"]
    assert [f["attempt"] for f in failures] == [10, 9, 8, 7]
    batch.observe(ev("reprocessFailure", failure(reason="x" * 5000), tai=121.0))
    kept = runs_by_name(batch)["dr1"]["failures"][0]["reason"]
    assert len(kept) == MAX_REASON and kept.endswith("…")
    assert len(batch.runs) == 3


def test_a_running_run_without_news_goes_stale() -> None:
    batch = BatchRuns(BatchLimits(stale_seconds=30.0))
    batch.observe(ev("reprocessProgress", progress(run="alive"), tai=100.0))
    batch.observe(ev("reprocessProgress", progress(run="ended", status="interrupted"), 100.0))
    assert not runs_by_name(batch, now=130.0)["alive"]["stale"]
    late = runs_by_name(batch, now=130.5)
    assert late["alive"]["stale"] and not late["ended"]["stale"]
    batch.observe(ev("reprocessFailure", failure(run="alive"), tai=130.0))  # a sign of life
    assert not runs_by_name(batch, now=131.0)["alive"]["stale"]
    assert batch.to_json(0.0)["staleSeconds"] == 30.0


BAD_PROGRESS = [
    ({"done": 3}, KeyError),
    (progress(run=""), ValueError),
    (progress(run=7), TypeError),
    (progress(mode="nightly"), ValueError),
    (progress(phase="warp"), ValueError),
    (progress(status="exploded"), ValueError),
    (progress(done="three"), TypeError),
    (progress(total=-1), ValueError),
    (progress(failed=True), TypeError),
    (progress(done=2.5), TypeError),
    (progress(ratePerSecond="fast"), TypeError),
    (progress(etaSeconds=float("inf")), ValueError),
    (progress(workers=-2), ValueError),
    ({k: v for k, v in progress().items() if k != "status"}, KeyError),
]
BAD_FAILURE = [
    (failure(unit="visit 7"), ValueError),
    (failure(unit="ccd:7/x"), ValueError),
    (failure(reason=None), TypeError),
    (failure(final="yes"), TypeError),
    (failure(attempt=-1), ValueError),
    ({k: v for k, v in failure().items() if k != "final"}, KeyError),
]


@pytest.mark.parametrize(
    ("topic", "data", "error"),
    [("reprocessProgress", d, e) for d, e in BAD_PROGRESS]
    + [("reprocessFailure", d, e) for d, e in BAD_FAILURE],
)
def test_malformed_payloads_raise_and_change_nothing(
    topic: str, data: dict[str, Any], error: type[Exception]
) -> None:
    batch = BatchRuns()
    batch.observe(ev("reprocessProgress", progress(), tai=100.0))
    before = batch.to_json(100.0)
    with pytest.raises(error):
        batch.observe(ev(topic, data, tai=101.0))
    assert batch.to_json(100.0) == before


def test_optional_numbers_may_be_null_and_whole_floats_are_counts() -> None:
    batch = BatchRuns()
    data = progress(ratePerSecond=None, etaSeconds=None, startedTai=None, workers=None, done=4.0)
    batch.observe(ev("reprocessProgress", data, tai=1.0))
    batch.observe(ev("reprocessFailure", failure(attempt=0, final=True), tai=2.0))  # never tried
    run = runs_by_name(batch)["dr1"]
    assert run["done"] == 4 and isinstance(run["done"], int) and run["ratePerSecond"] is None
    assert run["failures"][0]["attempt"] == 0


def test_dashboard_folds_reprocess_telemetry_and_counts_malformed() -> None:
    dash = Dashboard(StatusBoard([]), Sink(), {}, batch=BatchLimits(stale_seconds=5.0))
    dash.observe(ev("reprocessProgress", progress(run="dr2", done=2), tai=1.0, seq=1))
    dash.observe(ev("reprocessFailure", failure(run="dr2", reason="<b>x</b>"), tai=1.5, seq=1))
    dash.observe(ev("reprocessProgress", progress(run="dr2", status="bogus"), tai=2.0, seq=2))
    dash.observe(ev("reprocessFailure", {"run": "dr2"}, tai=2.0, seq=2))
    assert dash.malformed == 2
    snap = dash.snapshot()
    assert snap["malformedEvents"] == 2 and snap["batch"]["staleSeconds"] == 5.0
    (run,) = snap["batch"]["runs"]
    assert (run["run"], run["done"], run["failures"][0]["reason"]) == ("dr2", 2, "<b>x</b>")
    assert run["stale"]  # its last event is at TAI 1.5, long ago
    assert snap["seqs"]["Reprocess/reprocessProgress"] == 2
    assert snap["night"]["logs"] == [] and snap["alarms"] == []


def test_other_sources_with_reprocess_topic_names_are_not_batch_runs() -> None:
    dash = Dashboard(StatusBoard([]), Sink(), {})
    dash.observe(Event("OCS", "reprocessProgress", 1, 1.0, progress(), "telemetry"))
    assert dash.snapshot()["batch"]["runs"] == [] and dash.malformed == 0
