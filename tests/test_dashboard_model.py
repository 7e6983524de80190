"""The dashboard's server-side model without a server: alarms (Watcher semantics), rules,
the night fold, the schedule and the service that ties them together."""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any

import pytest

from commands.dashboard.alarms import Alarm, AlarmBook, AlarmError, Severity
from commands.dashboard.night import STAGES, Limits, Night
from commands.dashboard.routes import STATIC_DIR
from commands.dashboard.rules import Rules, Thresholds, stepped
from commands.dashboard.schedule import Schedule, iso_utc
from commands.dashboard.service import PAGE_TOPICS, Dashboard
from commands.status import StatusBoard
from state.clock import TAI_MINUS_UTC, mjd_tai
from state.errors import ConfigurationError, InvalidInputError, NotPermittedError
from state.events import Event, EventKind

W, S, C, N = Severity.WARNING, Severity.SERIOUS, Severity.CRITICAL, Severity.NONE


def ev(component: str, topic: str, data: dict[str, Any], seq: int = 1, tai: float = 100.0) -> Event:
    return Event(component, topic, seq, tai, data)


# --------------------------------------------------------------------- alarms
def test_highest_severity_since_acknowledgement_is_latched() -> None:
    alarm = Alarm("BufferFill.SummitBuffer", "SummitBuffer")
    assert alarm.set_severity(W, "70 %", now=1)
    assert alarm.set_severity(C, "96 %", now=2)
    assert alarm.set_severity(S, "90 %", now=3)
    assert (alarm.severity, alarm.max_severity, alarm.acknowledged) == (S, C, False)
    assert alarm.reason == "90 %"


def test_acknowledge_needs_at_least_the_latched_severity() -> None:
    alarm = Alarm("a", "X")
    alarm.set_severity(S, "bad", now=1)
    with pytest.raises(AlarmError, match="latched severity is SERIOUS"):
        alarm.acknowledge(W, "operator", now=2)
    assert not alarm.acknowledged
    assert alarm.acknowledge(C, "operator", now=2)
    assert alarm.acknowledged and alarm.acknowledged_by == "operator"
    assert alarm.max_severity == C  # latched at the acknowledged level


def test_acknowledged_alarm_unacknowledges_only_above_its_acknowledged_level() -> None:
    alarm = Alarm("a", "X")
    alarm.set_severity(W, "w", now=1)
    alarm.acknowledge(S, "operator", now=2)
    alarm.set_severity(S, "s", now=3)
    assert alarm.acknowledged
    alarm.set_severity(C, "c", now=4)
    assert not alarm.acknowledged and alarm.max_severity == C and alarm.acknowledged_by == ""


def test_cleared_unacknowledged_alarm_is_stale_until_acknowledged() -> None:
    alarm = Alarm("a", "X")
    alarm.set_severity(S, "s", now=1)
    assert alarm.set_severity(N, "", now=2)
    assert alarm.stale and not alarm.nominal and alarm.max_severity == S
    assert alarm.reason == "s"  # the reason stays with the stale alarm
    assert alarm.acknowledge(S, "operator", now=3)
    assert alarm.nominal and not alarm.stale


def test_acknowledged_alarm_resets_when_it_clears() -> None:
    alarm = Alarm("a", "X")
    alarm.set_severity(S, "s", now=1)
    alarm.acknowledge(S, "operator", now=2)
    alarm.set_severity(N, "", now=3)
    assert alarm.nominal and not alarm.acknowledged and alarm.reason == ""


def test_nominal_stays_quiet() -> None:
    alarm = Alarm("a", "X")
    assert not alarm.set_severity(N, "", now=1)
    assert not alarm.acknowledge(N, "operator", now=1)
    alarm.set_severity(W, "w", now=2)
    assert not alarm.set_severity(W, "w", now=3)  # nothing visible changed


def test_mute_for_a_duration_and_expiry() -> None:
    alarm = Alarm("a", "X")
    alarm.set_severity(S, "s", now=0)
    alarm.mute(60, S, "operator", now=10)
    assert alarm.muted and alarm.hidden() and alarm.timestamp_unmute == 70
    alarm.set_severity(C, "c", now=20)
    assert alarm.muted and not alarm.hidden()  # above the muted level: shown again
    assert not alarm.expire_mute(69)
    assert alarm.expire_mute(70) and not alarm.muted and alarm.muted_by == ""


@pytest.mark.parametrize(
    ("duration", "severity"), [(0, S), (-5, S), (10, N), (7 * 86400 + 1, S), (math.inf, S)]
)
def test_bad_mutes_are_refused(duration: float, severity: Severity) -> None:
    alarm = Alarm("a", "X")
    with pytest.raises(AlarmError):
        alarm.mute(duration, severity, "operator", now=0)
    assert not alarm.muted


def test_severity_parse() -> None:
    assert Severity.parse("serious") == S and Severity.parse(4) == C and Severity.parse("2") == W
    with pytest.raises(InvalidInputError, match="unknown severity 'LOUD'"):
        Severity.parse("LOUD")
    for bad in (1e999, math.nan, 10**400, "9" * 5000, True, [4], 5, "0"):
        with pytest.raises(InvalidInputError, match="unknown severity"):
            Severity.parse(bad)


def test_book_counts_stale_and_muted() -> None:
    book = AlarmBook()
    book.alarm("a", "X").set_severity(S, "s", now=1)
    book.alarm("a", "X").set_severity(N, "", now=2)
    book.alarm("b", "X").set_severity(W, "w", now=1)
    book.alarm("b", "X").mute(100, C, "operator", now=1)
    book.alarm("c", "X").set_severity(C, "c", now=1)
    book.alarm("c", "X").acknowledge(C, "operator", now=2)
    assert book.counts() == {"active": 1, "acknowledged": 1, "stale": 1, "muted": 1}
    with pytest.raises(AlarmError, match="no alarm named 'zz'"):
        book.get("zz")


# ---------------------------------------------------------------------- rules
def test_stepped_thresholds() -> None:
    steps = (0.7, 0.85, 0.95)
    assert [stepped(v, steps) for v in (0.1, 0.7, 0.9, 0.99)] == [N, W, S, C]


def test_buffer_rule_takes_the_worse_of_fill_and_the_buffers_own_alarm() -> None:
    rules = Rules()
    (v,) = rules.observe(ev("SummitBuffer", "bufferStatus", {"fillFraction": 0.5}))
    assert (v.alarm, v.severity) == ("BufferFill.SummitBuffer", N)
    (v,) = rules.observe(ev("SummitBuffer", "bufferStatus", {"fillFraction": 0.9}))
    assert v.severity == S and "90% full" in v.reason
    (v,) = rules.observe(
        ev("SummitBuffer", "bufferAlarm", {"severity": "CRITICAL", "reason": "link down"})
    )
    assert v.severity == C and "link down" in v.reason


def test_ingest_lag_and_latency_rules() -> None:
    rules = Rules(Thresholds())
    (v,) = rules.observe(ev("Ingest", "ingestStatus", {"lagSeconds": 75.0}))
    assert (v.alarm, v.severity) == ("IngestLag.Ingest", S)
    (v,) = rules.observe(ev("AP", "alertsPublished", {"visit": 3, "latencySeconds": 70.0}))
    assert (v.alarm, v.severity) == ("AlertLatency.AP", S) and "budget 60 s" in v.reason
    (v,) = rules.observe(ev("AP", "alertsPublished", {"visit": 3, "latencySeconds": 20.0}))
    assert v.severity == S  # the visit's worst CCD counts
    (v,) = rules.observe(ev("AP", "visitLatency", {"visit": 2, "latencySeconds": 5.0}))
    assert v.severity == S  # a late report of an older visit does not clear a newer one
    (v,) = rules.observe(ev("AP", "visitLatency", {"visit": 4, "latencySeconds": 12.0}))
    assert v.severity == N
    assert rules.observe(ev("AP", "heartbeat", {})) == []


def test_heartbeat_and_fault_rules_from_the_board() -> None:
    board = StatusBoard(["A", "B"])
    start = time.monotonic()
    rules = Rules(started=start)
    board.update(ev("A", "heartbeat", {"state": "ENABLED", "heartbeatInterval": 1.0}))
    board.update(ev("A", "summaryState", {"summaryState": "FAULT"}))
    board.update(ev("A", "errorCode", {"errorCode": 7, "errorReport": "disk"}))
    verdicts = {v.alarm: v for v in rules.tick(board, now=start + 1.0)}
    assert verdicts["Heartbeat.A"].severity == N
    assert verdicts["Fault.A"].severity == S and "FAULT 7: disk" in verdicts["Fault.A"].reason
    assert verdicts["Heartbeat.B"].severity == N  # within the grace after startup
    late = {v.alarm: v for v in rules.tick(board, now=start + 5.0)}
    assert late["Heartbeat.A"].severity == S and "no heartbeat" in late["Heartbeat.A"].reason
    assert {v.alarm: v for v in rules.tick(board, now=start + 60)}["Heartbeat.B"].severity == C


# ---------------------------------------------------------------------- night
def test_night_folds_stages_alerts_latency_and_buffer() -> None:
    night = Night(Limits(visits=2))
    night.observe(
        ev("Camera", "nextVisit", {"visit": 1, "ra": 10.0, "dec": -5.0, "band": "r"}, tai=1)
    )
    night.observe(ev("Camera", "endReadout", {"visit": 1, "detectors": [0, 1]}, tai=2))
    night.observe(ev("P", "ccdStage", {"visit": 1, "detector": 0, "stage": "isrDone"}, tai=3))
    night.observe(ev("P", "ccdStage", {"visit": 1, "detector": 0, "stage": "ingested"}, tai=4))
    night.observe(ev("P", "ccdProcessed", {"visit": 1, "detector": 1, "statusCode": 2}, tai=5))
    night.observe(
        ev(
            "AP",
            "alertsPublished",
            {"visit": 1, "detector": 0, "nAlerts": 3, "latencySeconds": 9, "positions": [[1, 2]]},
        )
    )
    night.observe(ev("AP", "visitLatency", {"visit": 1, "latencySeconds": 9.5, "nAlerts": 3}))
    night.observe(ev("B", "bufferStatus", {"fillFraction": 0.25, "backlogCount": 4}, tai=6))
    night.observe(ev("B", "logMessage", {"level": 30, "message": "slow link"}, tai=7))
    out = night.to_json()
    (visit,) = out["visits"]
    assert visit["ccds"]["0"]["stage"] == STAGES.index("alertsPublished")
    assert visit["ccds"]["1"] == {"stage": 0, "status": 2, "tai": 2}
    assert visit["nAlerts"] == 3 and visit["latencySeconds"] == 9.5 and visit["withinBudget"]
    assert out["alertPositions"] == [[1.0, 2.0]] and out["skyVisits"] == [[1, 10.0, -5.0, "r"]]
    assert out["buffer"] == [[6, 0.25, 4, 0]]
    assert out["logs"][0]["message"] == "slow link" and out["logs"][0]["level"] == 30
    for visit_number in (2, 3):
        night.observe(ev("Camera", "endReadout", {"visit": visit_number, "detectors": [0]}))
    assert [v["visit"] for v in night.to_json()["visits"]] == [2, 3]  # bounded


def test_alerts_per_visit_do_not_depend_on_arrival_order() -> None:
    published = ev("AP", "alertsPublished", {"visit": 1, "detector": 0, "nAlerts": 4})
    total = ev("AP", "visitLatency", {"visit": 1, "latencySeconds": 9.0, "nAlerts": 4})
    for order in ([published, total], [total, published]):
        night = Night()
        for event in order:
            night.observe(event)
        assert night.to_json()["visits"][0]["nAlerts"] == 4


def test_night_keeps_each_visits_camera() -> None:
    night = Night()
    night.observe(ev("Camera", "nextVisit", {"visit": 1, "camera": "lsstcam-lite", "band": "r"}))
    night.observe(ev("Camera", "endReadout", {"visit": 2, "camera": "comcam", "detectors": [0]}))
    night.observe(ev("Camera", "endReadout", {"visit": 1, "detectors": [0]}))  # keeps its camera
    assert [v["camera"] for v in night.to_json()["visits"]] == ["lsstcam-lite", "comcam"]


def test_focal_plane_geometry_draws_every_ccd_as_a_separate_cell() -> None:
    from commands.dashboard.focal_plane import focal_plane

    lite = focal_plane("lsstcam-lite")
    dets = lite["detectors"]
    assert len(dets) == 189 and len({d["name"] for d in dets}) == 189
    assert len({d["raft"] for d in dets}) == 21
    assert lite["ccdMm"] == 5.12 and lite["slotMm"] == pytest.approx(0.86 * 42.25, abs=1e-3)
    cells = {(round(d["x"] / 42.25 * 4), round(d["y"] / 42.25 * 4)) for d in dets}
    assert len(cells) == 189  # no two cells drawn on the same spot
    mini = focal_plane("mini")
    assert mini["slotMm"] == pytest.approx(0.86 * 5.6, abs=1e-3) and mini["ccdMm"] == 5.12
    with pytest.raises(ConfigurationError, match="unknown camera"):
        focal_plane("../defaults/system")


# ------------------------------------------------------------------- schedule
def test_schedule_times_in_tai_and_utc() -> None:
    schedule = Schedule()
    mjd = 61000.5
    schedule.observe(ev("Camera", "nextVisit", {"visit": 5, "startMjd": mjd}, tai=123.0))
    schedule.observe(
        ev("OCS", "predictedSchedule", {"visits": [{"visit": 6, "startMjd": mjd + 0.001}]})
    )
    out = schedule.to_json(now=1_000_000_000.0)
    start = mjd_tai(mjd)
    assert out["nextVisit"]["startTai"] == start and out["nextVisit"]["publishedTai"] == 123.0
    assert out["nextVisit"]["startUtc"] == iso_utc(start)
    assert out["predictedSchedule"]["visits"][0]["visit"] == 6
    assert out["utc"] == "2001-09-09T01:46:03.000Z"  # 1e9 TAI = 1e9 - 37 UTC
    assert out["taiMinusUtc"] == TAI_MINUS_UTC
    with pytest.raises(ValueError, match="must be a list"):
        schedule.observe(ev("OCS", "predictedSchedule", {"visits": "soon"}))


# -------------------------------------------------------------------- service
class Sink:
    """Where the dashboard's Watcher events go (the gateway puts them on the bus)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, source: str, topic: str, data: dict[str, Any], kind: EventKind) -> Event:
        event = Event(source, topic, len(self.events) + 1, 0.0, data, kind)
        self.events.append(event)
        return event


def test_service_raises_and_acts_on_alarms_with_authorization() -> None:
    sink = Sink()
    dash = Dashboard(StatusBoard(["Buf"]), sink, {"Buf": frozenset({"operator"})})
    dash.observe(ev("Buf", "bufferStatus", {"fillFraction": 0.97}, seq=4))
    assert sink.events[-1].topic == "alarm" and sink.events[-1].data["severity"] == "CRITICAL"
    assert dash.snapshot()["seqs"]["Buf/bufferStatus"] == 4
    with pytest.raises(NotPermittedError, match="'scientist' may not act on Buf"):
        dash.acknowledge("BufferFill.Buf", "CRITICAL", "scientist")
    with pytest.raises(AlarmError):
        dash.acknowledge("BufferFill.Buf", "SERIOUS", "operator")
    assert dash.acknowledge("BufferFill.Buf", "CRITICAL", "operator")["acknowledged"]
    assert dash.mute("BufferFill.Buf", 30, "CRITICAL", "operator")["muted"]
    assert sink.events[-1].data["counts"]["muted"] == 1
    assert not dash.unmute("BufferFill.Buf", "operator")["muted"]
    dash.tick()
    assert sink.events[-1].topic == "componentStatus"
    assert dash.session("operator") == {"identity": "operator", "commandable": ["Buf"]}


def test_service_counts_malformed_events_and_keeps_going() -> None:
    dash = Dashboard(StatusBoard([]), Sink(), {})
    dash.observe(ev("P", "ccdStage", {"visit": 1, "detector": "north", "stage": "isrDone"}))
    dash.observe(ev("B", "bufferStatus", {"fillFraction": "full"}))
    dash.observe(ev("OCS", "predictedSchedule", {"visits": 3}))
    dash.observe(ev("B", "bufferAlarm", {"severity": "LOUD", "fillFraction": 0.5}))
    dash.observe(ev("AP", "alertsPublished", {"visit": 1, "detector": 0, "positions": [[1]]}))
    assert dash.malformed == 5
    dash.observe(ev("P", "ccdStage", {"visit": 1, "detector": 2, "stage": "isrDone"}))
    assert dash.snapshot()["night"]["visits"][0]["ccds"]["2"]["stage"] == STAGES.index("isrDone")


def test_page_subscribes_to_the_topics_the_server_lists() -> None:
    source = (STATIC_DIR / "live.js").read_text()
    found = re.search(r"const PAGE_TOPICS = (\[.*?\]);", source, re.S)
    assert found is not None
    assert tuple(json.loads(found.group(1))) == PAGE_TOPICS


def test_snapshot_sequence_numbers_survive_reordering_and_follow_restarts() -> None:
    dash = Dashboard(StatusBoard([]), Sink(), {})
    for seq in (2, 3, 1, 4):  # the bus delivered seq 1 late
        dash.observe(ev("P", "ccdStage", {"visit": 1, "detector": seq, "stage": "isrDone"}, seq))
    assert dash.seqs["P/ccdStage"] == 4
    dash.observe(ev("P", "ccdStage", {"visit": 1, "detector": 9, "stage": "isrDone"}, seq=1))
    assert dash.seqs["P/ccdStage"] == 1  # restarted: numbering afresh


def test_a_lost_node_raises_a_latched_alarm_with_its_cost() -> None:
    """``dmcs replay --kill-node-at`` publishes ``nodeLost``; the dashboard raises it."""
    dash = Dashboard(StatusBoard([]), Sink(), {})
    lost = {"nodeId": "a69e9f1a45b5e1663de4", "role": "base", "visit": 2025050500002,
            "actors": ["Association", "CcdProcessor0"], "ccdsInterrupted": 8}  # fmt: skip
    dash.observe(ev("Cluster", "nodeLost", lost, tai=1000.0))
    (alarm,) = [a for a in dash.snapshot()["alarms"] if a["name"].startswith("NodeLoss.")]
    assert alarm["name"] == "NodeLoss.a69e9f1a45b5" and alarm["severity"] == "SERIOUS"
    assert "visit 2025050500002" in alarm["reason"] and "8 CCDs" in alarm["reason"]
    assert "Association, CcdProcessor0" in alarm["reason"]
    dash.tick()  # nothing clears it: a lost node stays raised until acknowledged
    (alarm,) = [a for a in dash.snapshot()["alarms"] if a["name"].startswith("NodeLoss.")]
    assert alarm["severity"] == "SERIOUS"
