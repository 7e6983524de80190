"""The dashboard's HTTP API and Watcher events through the real system (Ray, bus, gateway),
fed by contract-shaped events from the test-only NightEmitter and the OCS input routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from commands.client import Client
from commands.server import RunningSystem
from state.contracts import ContractError
from state.states import State
from tests.conftest import TOKENS, component_spec
from tests.standard import until

EMITTER = "tests.night_emitter:NightEmitter"


@pytest.fixture(scope="module")
async def running(system_factory: Any) -> RunningSystem:
    return await system_factory(
        component_spec("HeaderService", "summit.header_service:HeaderService"),
        component_spec("Pipeline", EMITTER, settings={"simulation_mode": 1}),
        component_spec("Faulty", EMITTER),
    )


@pytest.fixture(scope="module")
async def ocs(running: RunningSystem) -> AsyncIterator[Client]:
    async with Client(running.ws_url, token=TOKENS["ocs"]) as client:
        await client.set_state("Pipeline", State.ENABLED)
        yield client


@pytest.fixture
async def http(running: RunningSystem) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    async with aiohttp.ClientSession(running.http_url) as session:

        async def call(method: str, path: str, who: str | None = None, **kw: Any) -> Any:
            headers = {"Authorization": f"Bearer {TOKENS[who]}"} if who else {}
            async with session.request(method, path, headers=headers, **kw) as response:
                body = await response.json() if response.content_type == "application/json" else {}
                return response.status, body

        yield call


async def alarm(http: Callable[..., Awaitable[Any]], name: str) -> dict[str, Any] | None:
    _, body = await http("GET", "/api/v1/alarms")
    return next((a for a in body["alarms"] if a["name"] == name), None)


async def test_pages_and_static_files_are_served(running: RunningSystem) -> None:
    async with aiohttp.ClientSession(running.http_url) as session:
        for start in ("/", "/dashboard"):
            async with session.get(start, allow_redirects=False) as r:
                assert r.status == 302 and r.headers["Location"] == "/dashboard/"
        for path, needle in [
            ("/dashboard/", "night operations"),
            ("/dashboard/schedule", "predicted schedule"),
            ("/dashboard/static/live.js", "dmcs.v1.json"),
            ("/dashboard/static/style.css", "--alert"),
        ]:
            async with session.get(path) as r:
                assert r.status == 200 and needle in await r.text()
        async with session.get("/dashboard/static/../routes.py") as r:
            assert r.status in (403, 404)


async def test_camera_geometry_api(http: Callable[..., Awaitable[Any]]) -> None:
    status, body = await http("GET", "/api/v1/cameras/lsstcam-lite")
    assert status == 200 and body["camera"] == "lsstcam-lite" and len(body["detectors"]) == 189
    first = body["detectors"][0]
    assert first == {"id": 0, "name": "R01_S00", "raft": "R01", "x": -169.25, "y": -296.25,
                     "widthMm": 5.12, "heightMm": 5.12}  # fmt: skip
    for bad in ("hsc", "..%2Fdefaults%2Fsystem"):
        status, body = await http("GET", f"/api/v1/cameras/{bad}")
        assert status == 404 and "unknown camera" in body["error"]


async def test_snapshot_shows_every_component_and_session_identity(
    running: RunningSystem, http: Callable[..., Awaitable[Any]]
) -> None:
    status, snap = await http("GET", "/api/v1/dashboard/snapshot")
    assert status == 200
    rows = {c["name"]: c for c in snap["components"]}
    assert set(rows) == {"HeaderService", "Pipeline", "Faulty"}
    assert rows["Pipeline"]["simulationMode"] and not rows["HeaderService"]["simulationMode"]
    assert rows["HeaderService"]["authorized"] == ["ocs", "operator"]
    assert abs(snap["tai"] - (await http("GET", "/api/v1/schedule"))[1]["tai"]) < 5
    assert (await http("GET", "/api/v1/dashboard/session", "operator"))[1] == {
        "identity": "operator",
        "commandable": ["Faulty", "HeaderService", "Pipeline"],
    }
    assert (await http("GET", "/api/v1/dashboard/session", "scientist"))[1]["commandable"] == []
    assert (await http("GET", "/api/v1/dashboard/session"))[1]["identity"] == ""
    async with aiohttp.ClientSession(running.http_url) as session:
        headers = {"Authorization": "Bearer nope"}
        async with session.get("/api/v1/dashboard/session", headers=headers) as r:
            assert r.status == 401


async def test_watcher_publishes_component_status_with_heartbeat_ages(
    running: RunningSystem,
) -> None:
    async with Client(running.ws_url) as watcher:
        async with asyncio.timeout(10):
            stream = watcher.subscribe(components=["Watcher"], topics=["componentStatus"])
            async for event in stream:
                names = {c["name"]: c for c in event.data["components"]}
                if all(c["heartbeatAge"] is not None for c in names.values()):
                    break
    assert set(names) == {"HeaderService", "Pipeline", "Faulty"}
    assert all(not c["stale"] and c["heartbeatAge"] < 1.5 for c in names.values())


async def test_buffer_alarm_raised_acknowledged_muted_and_reset(
    ocs: Client, http: Callable[..., Awaitable[Any]]
) -> None:
    name = "BufferFill.Pipeline"

    async def fill(fraction: float) -> None:
        data = {"fillFraction": fraction, "backlogCount": 3, "bytesUsed": 1, "capacityBytes": 2}
        await ocs.command("Pipeline", "emit", topic="bufferStatus", data=data, kind="telemetry")

    await fill(0.9)
    raised = await until(lambda: alarm(http, name))
    assert raised["severity"] == raised["maxSeverity"] == "SERIOUS"
    assert "90% full" in raised["reason"] and not raised["acknowledged"]

    path = f"/api/v1/alarms/{name}/acknowledge"
    status, body = await http("POST", path, "scientist", json={"severity": "SERIOUS"})
    assert (status, body["code"], body["ack"]) == (403, -300, "CMD_NOPERM")
    assert (await http("POST", path, None, json={"severity": "SERIOUS"}))[0] == 403
    status, body = await http("POST", path, "operator", json={"severity": "WARNING"})
    assert status == 422 and "latched severity is SERIOUS" in body["reason"]
    status, body = await http("POST", path, "operator", json={"severity": "LOUD"})
    assert status == 422 and "unknown severity" in body["reason"]
    status, body = await http("POST", path, "operator", data=b"{not json")
    assert status == 422 and "not valid JSON" in body["reason"]
    status, body = await http("POST", path, "operator", json={"severity": "SERIOUS"})
    assert status == 200 and body["alarm"]["acknowledgedBy"] == "operator"

    mute = f"/api/v1/alarms/{name}/mute"
    assert (await http("POST", mute, "operator", json={"duration": "long"}))[0] == 422
    assert (await http("POST", mute, "operator", json={"duration": -1}))[0] == 422
    status, body = await http("POST", mute, "operator", json={"duration": 600})
    assert status == 200 and body["alarm"]["muted"] and body["alarm"]["mutedBy"] == "operator"
    _, listed = await http("GET", "/api/v1/alarms")
    assert listed["counts"]["muted"] >= 1 and listed["counts"]["acknowledged"] >= 1
    assert (await http("POST", f"/api/v1/alarms/{name}/unmute", "operator"))[0] == 200

    await fill(0.97)  # above the acknowledged level: unacknowledged again
    worse = await until(lambda: _matching(http, name, maxSeverity="CRITICAL"))
    assert not worse["acknowledged"]
    await fill(0.1)
    stale = await until(lambda: _matching(http, name, severity="NONE"))
    assert stale["stale"] and stale["maxSeverity"] == "CRITICAL"
    assert (await http("POST", path, "operator", json={"severity": "CRITICAL"}))[0] == 200
    assert (await alarm(http, name))["nominal"]
    assert (await http("POST", "/api/v1/alarms/Nope.X/acknowledge", "operator"))[0] == 404


async def _matching(http: Callable[..., Awaitable[Any]], name: str, **want: Any) -> Any:
    found = await alarm(http, name)
    return found if found and all(found[k] == v for k, v in want.items()) else None


async def test_fault_alarm_follows_the_component(
    ocs: Client, http: Callable[..., Awaitable[Any]]
) -> None:
    await ocs.set_state("Faulty", State.ENABLED)
    await ocs.command("Faulty", "fail", code=42, report="detector overheated")
    fault = await until(lambda: _matching(http, "Fault.Faulty", severity="SERIOUS"))
    assert fault["reason"] == "FAULT 42: detector overheated"
    await ocs.command("Faulty", "standby")
    stale = await until(lambda: _matching(http, "Fault.Faulty", severity="NONE"))
    assert stale["stale"] and not stale["acknowledged"]


async def test_latency_ingest_and_night_panels_from_contract_events(
    ocs: Client, http: Callable[..., Awaitable[Any]]
) -> None:
    visit = 7001
    await ocs.send_camera_event(
        "nextVisit", visit=visit, ra=150.0, dec=-30.0, band="g", startMjd=61000.1, detectors=[0, 1]
    )
    await ocs.send_camera_event("endReadout", visit=visit, detectors=[0, 1], images=[])
    stages = [["ccdStage", {"visit": visit, "detector": d, "stage": "isrDone"}] for d in (0, 1)]
    alerts = {"visit": visit, "detector": 0, "nAlerts": 4, "latencySeconds": 75.0}
    await ocs.command(
        "Pipeline",
        "emitMany",
        events=[
            *stages,
            ["alertsPublished", {**alerts, "positions": [[150.01, -30.0], [150.02, -30.01]]}],
            ["visitLatency", {"visit": visit, "nAlerts": 4, "latencySeconds": 75.0}],
            ["ingestStatus", {"ingestedCount": 2, "failedCount": 0, "lagSeconds": 400.0}],
            ["logMessage", {"level": 30, "message": "visit 7001 late"}],
        ],
    )

    async def night() -> Any:
        _, body = await http("GET", "/api/v1/night")
        visits = {v["visit"]: v for v in body["visits"]}
        return body if visit in visits and visits[visit]["latencySeconds"] else None

    body = await until(night)
    row = next(v for v in body["visits"] if v["visit"] == visit)
    assert row["ccds"]["0"]["stage"] == body["stages"].index("alertsPublished")
    assert row["ccds"]["1"]["stage"] == body["stages"].index("isrDone")
    assert row["nAlerts"] == 4 and row["band"] == "g" and row["ra"] == 150.0
    assert [150.01, -30.0] in body["alertPositions"]
    assert any(line["message"] == "visit 7001 late" for line in body["logs"])
    latency = await until(lambda: _matching(http, "AlertLatency.Pipeline", severity="SERIOUS"))
    assert "visit 7001" in latency["reason"]
    lag = await until(lambda: _matching(http, "IngestLag.Pipeline", severity="CRITICAL"))
    assert "400.0 s" in lag["reason"]


async def test_schedule_api_publishes_next_visit_and_predicted_schedule(
    ocs: Client, http: Callable[..., Awaitable[Any]]
) -> None:
    planned = [
        {"visit": 9001 + i, "startMjd": 61000.2 + i * 0.0004, "ra": 10.0 + i, "dec": -40.0,
         "band": "r", "exposureTime": 30.0, "fieldId": 77}
        for i in range(3)
    ]  # fmt: skip
    await ocs.send_telemetry("predictedSchedule", visits=planned)
    await ocs.send_camera_event(
        "nextVisit", visit=9001, imageName="MN_O_20261121_000001", startMjd=61000.2, band="r"
    )

    async def ready() -> Any:
        _, body = await http("GET", "/api/v1/schedule")
        nxt = body["nextVisit"]
        planned = body["predictedSchedule"]["visits"]
        return body if nxt and nxt["visit"] == 9001 and planned else None

    body = await until(ready)
    assert [v["visit"] for v in body["predictedSchedule"]["visits"]] == [9001, 9002, 9003]
    first = body["predictedSchedule"]["visits"][0]
    assert first["startTai"] == pytest.approx((61000.2 - 40587) * 86400)
    assert first["startUtc"].endswith("Z") and first["startTaiIso"].endswith("TAI")
    assert body["nextVisit"]["imageName"] == "MN_O_20261121_000001"
    assert body["taiMinusUtc"] == 37.0


async def test_batch_runs_from_reprocess_telemetry(
    running: RunningSystem, http: Callable[..., Awaitable[Any]]
) -> None:
    progress = {"run": "dr-api", "mode": "release", "phase": "ccd", "done": 3, "total": 12,
                "failed": 1, "ratePerSecond": 0.5, "etaSeconds": 18.0, "status": "running",
                "startedTai": 1.0, "workers": 2}  # fmt: skip
    failure = {"run": "dr-api", "unit": "ccd:7001/4", "reason": "PsfFitError: <no stars>",
               "attempt": 2, "final": True}  # fmt: skip
    _, before = await http("GET", "/api/v1/dashboard/snapshot")
    async with Client(running.ws_url, token=TOKENS["batch"]) as batch:
        await batch.send_telemetry("reprocessProgress", **progress)
        await batch.send_telemetry("reprocessFailure", **failure)
        with pytest.raises(ContractError, match="'status'"):  # refused at the door
            await batch.send_telemetry("reprocessProgress", **{**progress, "status": "exploded"})

    async def shown() -> Any:
        _, snap = await http("GET", "/api/v1/dashboard/snapshot")
        runs = {r["run"]: r for r in snap["batch"]["runs"]}
        run = runs.get("dr-api")
        return (run, snap) if run and run["failures"] else None

    run, snap = await until(shown)
    assert snap["malformedEvents"] == before["malformedEvents"]
    assert (run["done"], run["total"], run["failed"], run["status"]) == (3, 12, 1, "running")
    assert run["mode"] == "release" and run["workers"] == 2 and not run["stale"]
    assert abs(run["updatedTai"] - snap["tai"]) < 10
    (kept,) = run["failures"]
    assert {k: kept[k] for k in failure} == failure
    assert snap["seqs"]["Reprocess/reprocessProgress"] >= 1
