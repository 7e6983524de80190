"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright)
against the real system: Ray actors, the bus, the gateway and its WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from commands.client import Client
from commands.gateway import HUB
from commands.server import RunningSystem
from state.states import State
from tests.conftest import TOKENS, component_spec

EMITTER = "tests.night_emitter:NightEmitter"
COMPONENTS = ("HeaderService", "Pipeline", "Buffer")


def find_chromium() -> str | None:
    """``DMCS_CHROMIUM``, else a Chromium or Chrome on PATH."""
    candidates = [os.environ.get("DMCS_CHROMIUM", "")]
    candidates += [shutil.which(n) or "" for n in ("chromium", "chromium-browser", "google-chrome")]
    return next((c for c in candidates if c and Path(c).exists()), None)


CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium found (apt-get install chromium, or set DMCS_CHROMIUM); "
    "scripts/test.sh installs it when run as root",
)


@pytest.fixture(scope="module")
async def running(system_factory: Any) -> RunningSystem:
    return await system_factory(
        component_spec("HeaderService", "summit.header_service:HeaderService"),
        component_spec("Pipeline", EMITTER, settings={"simulation_mode": 1}),
        component_spec("Buffer", EMITTER),
    )


@pytest.fixture(scope="module")
async def ocs(running: RunningSystem) -> AsyncIterator[Client]:
    async with Client(running.ws_url, token=TOKENS["ocs"]) as client:
        await client.set_state("Pipeline", State.ENABLED)
        await client.set_state("Buffer", State.ENABLED)
        yield client


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        yield chromium
        await chromium.close()


@pytest.fixture
async def page(browser: Any, running: RunningSystem) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = await context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    await tab.goto(f"{running.http_url}/dashboard/")
    await tab.wait_for_selector("#conn.ok", timeout=10_000)
    yield tab
    await context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


async def sign_in(page: Any, who: str) -> None:
    await page.fill("#token", TOKENS[who])
    await page.click("#signin")
    await page.wait_for_function(
        f"document.querySelector('#identity').textContent.includes('{who}')", timeout=5000
    )
    await page.wait_for_selector("#conn.ok", timeout=10_000)


def row(component: str) -> str:
    return f'tr[data-component="{component}"]'


async def test_page_shows_every_component(page: Any) -> None:
    await page.wait_for_selector(row("Buffer"), timeout=5000)
    names = await page.eval_on_selector_all(
        "#components tbody tr", "rows => rows.map(r => r.dataset.component)"
    )
    assert sorted(names) == sorted(COMPONENTS)
    await page.wait_for_selector(f"{row('Pipeline')} .badge.sim")
    assert "read-only" in await page.inner_text("#identity")
    assert await page.query_selector("button[data-cmd]") is None  # watchers get no controls
    assert "TAI" in await page.inner_text("#clock-tai")
    assert "UTC" in await page.inner_text("#clock-utc")


async def test_state_change_through_the_client_appears_within_2_s(page: Any, ocs: Client) -> None:
    if await ocs.get_state("HeaderService") != State.STANDBY:
        await ocs.set_state("HeaderService", State.STANDBY)
    await ocs.command("HeaderService", "start")
    started = time.monotonic()
    await ocs.command("HeaderService", "enable")
    selector = f'{row("HeaderService")} td.state[data-state="ENABLED"]'
    await page.wait_for_selector(selector, timeout=2000)
    assert time.monotonic() - started < 2.0


async def test_authorized_command_from_the_page_works(page: Any, ocs: Client) -> None:
    await ocs.set_state("HeaderService", State.ENABLED)
    await sign_in(page, "operator")
    button = f'{row("HeaderService")} button[data-cmd="disable"]'
    await page.wait_for_selector(button, timeout=5000)
    await page.click(button)
    await page.wait_for_selector(
        f'{row("HeaderService")} td.state[data-state="DISABLED"]', timeout=5000
    )
    assert await ocs.get_state("HeaderService") == State.DISABLED
    await page.wait_for_selector('#command-log tr[data-ack="CMD_COMPLETE"]', timeout=5000)
    await page.select_option(f"{row('HeaderService')} select.level", "10")
    await page.click(f'{row("HeaderService")} button[data-cmd="setLogLevel"]')
    await page.wait_for_function(
        "[...document.querySelectorAll('#command-log tr')].some("
        "r => r.textContent.includes('setLogLevel') && r.dataset.ack === 'CMD_COMPLETE')",
        timeout=5000,
    )


async def test_unauthorized_identity_is_read_only_and_refused(page: Any, ocs: Client) -> None:
    await ocs.set_state("HeaderService", State.DISABLED)
    await sign_in(page, "scientist")
    assert "read-only" in await page.inner_text("#identity")
    assert await page.query_selector("button[data-cmd]") is None
    # Forcing a command from the page's own API: the component refuses it.
    entry = await page.evaluate("window.dmcs.command('HeaderService', 'enable')")
    assert entry["ack"] == "CMD_NOPERM" and "scientist" in entry["result"]
    await page.wait_for_selector('#command-log tr[data-ack="CMD_NOPERM"]', timeout=5000)
    assert await ocs.get_state("HeaderService") == State.DISABLED
    refused = await page.evaluate(
        "window.dmcs.alarmAction('Heartbeat.HeaderService', 'mute', {duration: 60})"
    )
    assert refused["ack"] in ("CMD_NOPERM", "CMD_FAILED")


async def test_alarm_raised_acknowledged_and_muted(page: Any, ocs: Client) -> None:
    await sign_in(page, "operator")
    data = {"fillFraction": 0.9, "backlogCount": 12, "backlogBytes": 3e8, "linkState": "up"}
    await ocs.command("Buffer", "emit", topic="bufferStatus", data=data, kind="telemetry")
    alarm = 'tr[data-alarm="BufferFill.Buffer"]'
    await page.wait_for_selector(f'{alarm}[data-severity="SERIOUS"]', timeout=5000)
    assert "90% full" in await page.inner_text(alarm)
    await page.click(f"{alarm} button.ack")
    await page.wait_for_selector(f'{alarm}[data-acknowledged="true"]', timeout=5000)
    assert "acknowledged by operator" in await page.inner_text(alarm)
    await page.select_option(f"{alarm} select.mute-for", "1800")
    await page.click(f"{alarm} button.mute")
    await page.wait_for_selector(f'{alarm}[data-muted="true"]', timeout=5000)
    await page.wait_for_function(
        "/muted [1-9]/.test(document.querySelector('#alarm-counts').textContent)", timeout=5000
    )
    await page.click(f"{alarm} button.unmute")
    await page.wait_for_selector(f'{alarm}[data-muted="false"]', timeout=5000)


async def test_reconnects_and_resyncs_after_the_server_drops_it(
    page: Any, running: RunningSystem
) -> None:
    before = await page.evaluate("window.dmcs.state.resyncs")
    for channel in list(running.app[HUB].channels):
        await channel.ws.close()
    await page.wait_for_function(
        f"window.dmcs.state.resyncs > {before} && window.dmcs.state.connected", timeout=10_000
    )
    await page.wait_for_selector("#conn.ok", timeout=5000)


async def test_night_panels_and_screenshot(
    page: Any, ocs: Client, running: RunningSystem, artifacts_dir: Path
) -> None:
    await sign_in(page, "operator")
    await play_small_night(ocs)
    await page.wait_for_function(
        "window.dmcs.state.night && window.dmcs.state.night.latency.length >= 6", timeout=10_000
    )
    await page.wait_for_selector("#next-visit b", timeout=5000)
    await page.select_option("#log-level", "30")
    await asyncio.sleep(0.5)
    levels = await page.eval_on_selector_all(
        "#logs tbody tr td:nth-child(3)", "cells => cells.map(c => c.textContent)"
    )
    assert levels and set(levels) <= {"WARNING", "ERROR", "CRITICAL"}
    await asyncio.sleep(2.5)  # longer than the page waits for a reordered event
    gaps = await page.evaluate("window.dmcs.state.gapsByTopic")
    assert gaps == {}  # nothing lost, nothing false
    await page.screenshot(path=str(artifacts_dir / "dashboard.png"), full_page=True)
    await page.goto(f"{running.http_url}/dashboard/schedule")
    await page.wait_for_selector('#predicted tr[data-visit="108"]', timeout=5000)
    await page.wait_for_selector('#next tr[data-field="visit"]', timeout=5000)
    await page.screenshot(path=str(artifacts_dir / "dashboard_schedule.png"), full_page=True)
    assert (artifacts_dir / "dashboard.png").stat().st_size > 10_000


async def play_small_night(ocs: Client) -> None:
    """Eight visits of nine CCDs as the pipeline's events describe them (docs/events.md)."""
    rng = random.Random(8)
    stages = ["isrDone", "differenceDone", "diaSourcesMeasured", "associated", "apdbStored"]
    planned = [
        {"visit": 100 + i, "startMjd": 61000.2 + i * 0.0004, "ra": 30.0 + 4 * i,
         "dec": -20.0 - 2 * i, "band": "gri"[i % 3], "exposureTime": 30.0, "fieldId": i}
        for i in range(9)
    ]  # fmt: skip
    await ocs.send_telemetry("predictedSchedule", visits=planned)
    for i, plan in enumerate(planned):
        visit = plan["visit"]
        await ocs.send_camera_event("nextVisit", **plan, imageName=f"MN_O_20261121_{visit:06d}")
        if i == len(planned) - 1:
            break  # the last one is still to come
        await ocs.send_camera_event("endReadout", visit=visit, detectors=list(range(9)), images=[])
        events: list[list[Any]] = []
        latencies = []
        for det in range(9):
            reached = stages if i < 6 or det < 5 else stages[: rng.randrange(1, 4)]
            events += [["imageInBuffer", {"visit": visit, "detector": det}]]
            events += [["imageIngested", {"visit": visit, "detector": det, "statusCode": 0}]]
            events += [["ccdStage", {"visit": visit, "detector": det, "stage": s}] for s in reached]
            if reached is stages:
                latency = rng.uniform(18, 40) if i != 4 else rng.uniform(55, 80)
                latencies.append(latency)
                positions = [
                    [plan["ra"] + rng.uniform(-1, 1), plan["dec"] + rng.uniform(-1, 1)]
                    for _ in range(rng.randrange(3, 12))
                ]
                alerts = {"visit": visit, "detector": det, "nAlerts": len(positions)}
                alerts |= {"latencySeconds": latency, "positions": positions}
                events.append(["alertsPublished", alerts])
        if i == 6:
            events.append(["ccdProcessed", {"visit": visit, "detector": 8, "statusCode": 3}])
        worst = max(latencies)
        events.append(
            ["visitLatency", {"visit": visit, "nAlerts": 50 + i, "nCcds": 9,
                              "latencySeconds": worst, "withinBudget": worst <= 60}]
        )  # fmt: skip
        fill = 0.2 + 0.08 * i
        buffer = {"fillFraction": fill, "backlogCount": 3 * i, "backlogBytes": 2e7 * i}
        events.append(["bufferStatus", {**buffer, "linkState": "up", "linkBandwidthMBps": 120}])
        events.append(["ingestStatus", {"ingestedCount": 9 * (i + 1), "failedCount": 0,
                                        "pendingHeaders": 0, "lagSeconds": 6.0 + i}])  # fmt: skip
        level = 30 if i == 4 else 20
        events.append(["logMessage", {"level": level, "message": f"visit {visit}: {worst:.1f} s"}])
        await ocs.command("Pipeline", "emitMany", events=events)


async def test_lsstcam_lite_focal_plane_and_grid_show_all_189_ccds(
    page: Any, ocs: Client, artifacts_dir: Path
) -> None:
    """Three lsstcam-lite visits: the grid has a column and the focal plane a cell for each of
    the 189 CCDs, at the stage the events say (sampled by reading the canvas back)."""
    from commands.dashboard.focal_plane import focal_plane

    geometry = focal_plane("lsstcam-lite")
    stages = ["isrDone", "differenceDone", "diaSourcesMeasured", "associated", "apdbStored"]
    detectors = list(range(189))
    for i, visit in enumerate((300, 301, 302)):
        await ocs.send_camera_event(
            "nextVisit", visit=visit, camera="lsstcam-lite", band="r", ra=10.0 + i, dec=-30.0,
            imageName=f"MC_O_20261121_{visit:06d}", detectors=detectors,
        )  # fmt: skip
        await ocs.send_camera_event(
            "endReadout", visit=visit, camera="lsstcam-lite", detectors=detectors, images=[]
        )
        done = 189 if i < 2 else 100  # the newest visit is still being processed
        events: list[list[Any]] = []
        for det in range(done):
            events += [["ccdStage", {"visit": visit, "detector": det, "stage": s}] for s in stages]
            events.append(["alertsPublished", {"visit": visit, "detector": det, "nAlerts": 1}])
        events.append(["ccdProcessed", {"visit": visit, "detector": 188, "statusCode": 3}])
        await ocs.command("Pipeline", "emitMany", events=events)
    await page.wait_for_selector('#focal-plane[data-ccds="189"]', timeout=10_000)
    await page.wait_for_selector('#ccd-grid[data-columns="189"]', timeout=10_000)
    await page.wait_for_function(
        "window.dmcs.state.night.visits.some(v => v.visit === 302"
        " && Object.keys(v.ccds).length === 189 && v.ccds['99'].stage === 9)",
        timeout=10_000,
    )
    await asyncio.sleep(0.5)  # one render after the last event
    title = await page.evaluate("document.querySelector('#focal-plane').dataset.title")
    assert title == "visit 302 · lsstcam-lite · 100/189 CCDs published"
    # The centre pixel of detector 0 (published: green), 150 (read out only) and 188 (failed).
    colours = await page.evaluate(
        """(points) => { const c = document.querySelector('#focal-plane');
          const ctx = c.getContext('2d'), r = window.devicePixelRatio || 1;
          return points.map(([x, y]) =>
            Array.from(ctx.getImageData(x * r, y * r, 1, 1).data)); }""",
        [await _focal_plane_pixel(page, geometry, d) for d in (0, 150, 188)],
    )
    green, read_out, failed = colours
    assert green[1] > 150 and green[0] < 100  # #3fb950
    assert read_out[2] > read_out[0] and read_out[1] < 150  # a dark blue stage colour
    assert failed[0] > 200 and failed[1] < 120  # #f85149
    await page.locator("#focal-plane").screenshot(path=str(artifacts_dir / "focal_plane.png"))
    await page.select_option("#fp-visit", "300")  # an earlier visit, every CCD published
    await page.wait_for_function(
        "document.querySelector('#focal-plane').dataset.title"
        " === 'visit 300 · lsstcam-lite · 188/189 CCDs published'",
        timeout=5000,
    )
    await page.locator("#ccd-grid").screenshot(path=str(artifacts_dir / "ccd_grid.png"))


async def _focal_plane_pixel(page: Any, geometry: dict[str, Any], detector: int) -> list[float]:
    """Where the page drew a detector's centre (CSS pixels), from the transform it reports."""
    t = await page.evaluate("JSON.parse(document.querySelector('#focal-plane').dataset.transform)")
    d = geometry["detectors"][detector]
    x = t["ox"] + (d["x"] - t["xMin"]) * t["scale"]
    return [x, t["top"] + (t["yMax"] - d["y"]) * t["scale"]]


async def test_gap_counter_counts_what_a_stalled_page_lost(
    browser: Any, system_factory: Any
) -> None:
    """A page whose tab stalls while a burst arrives loses events at the gateway's bounded
    queue (10 here): the header counts the drops and the sequence gaps, and it resyncs."""
    small = await system_factory(component_spec("Flood", EMITTER), client_queue=10)
    context = await browser.new_context()
    tab = await context.new_page()
    try:
        await tab.goto(f"{small.http_url}/dashboard/")
        await tab.wait_for_selector("#conn.ok", timeout=10_000)
        resyncs = await tab.evaluate("window.dmcs.state.resyncs")
        async with Client(small.ws_url, token=TOKENS["ocs"]) as client:
            await client.set_state("Flood", State.ENABLED)
            padding = "x" * 2000
            burst = [["logMessage", {"level": 20, "message": padding}] for _ in range(400)]
            stall = tab.evaluate("() => { const t = Date.now(); while (Date.now() - t < 4000); }")
            stalled = asyncio.ensure_future(stall)
            await asyncio.sleep(0.3)
            for _ in range(8):
                await client.command("Flood", "emitMany", events=burst)
            await stalled
            await client.command("Flood", "emit", topic="logMessage", data={"level": 20})
        await tab.wait_for_function(
            "window.dmcs.state.dropped > 0 && window.dmcs.state.gaps > 0"
            f" && window.dmcs.state.resyncs > {resyncs}",
            timeout=10_000,
        )
        await tab.wait_for_function(  # and the header says so
            "!/gaps 0 |dropped 0 /.test(document.querySelector('#gaps').textContent)",
            timeout=5000,
        )
    finally:
        await context.close()


def batch_progress(run: str, **over: Any) -> dict[str, Any]:
    data = {"run": run, "mode": "release", "phase": "ccd", "done": 6, "total": 24, "failed": 1,
            "ratePerSecond": 1.25, "etaSeconds": 14.4, "status": "running", "startedTai": 1.0,
            "workers": 2}  # fmt: skip
    return {**data, **over}


async def test_batch_panel_shows_runs_and_failures_as_text(
    page: Any, running: RunningSystem, artifacts_dir: Path
) -> None:
    assert "no batch runs" in await page.inner_text("#batch-runs")
    failure = {"run": "dr-browser", "unit": "ccd:7001/4", "reason": "<b>x</b> broke",
               "attempt": 3, "final": True}  # fmt: skip
    async with Client(running.ws_url, token=TOKENS["batch"]) as batch:
        await batch.send_telemetry("reprocessProgress", **batch_progress("dr-browser"))
        await batch.send_telemetry("reprocessFailure", **failure)
        done = batch_progress("catchup-20261121", mode="catchUp", phase="region", done=9,
                              total=9, failed=0, etaSeconds=0.0, status="done")  # fmt: skip
        await batch.send_telemetry("reprocessProgress", **done)
    run = '#batch-runs tr[data-run="dr-browser"]'
    await page.wait_for_selector(f'{run}[data-status="running"][data-stale="false"]', timeout=5000)
    assert "6/24" in await page.inner_text(f"{run} td.progress")
    assert "1.25 /s" in await page.inner_text(run)
    await page.wait_for_selector('#batch-runs tr[data-run="catchup-20261121"] .badge.ok')
    row = '#batch-failures tr[data-unit="ccd:7001/4"]'
    await page.wait_for_selector(row, timeout=5000)
    assert await page.inner_text(f"{row} td.reason") == "<b>x</b> broke"
    assert await page.query_selector("#batch-panel b") is None  # text, not markup
    assert "final" in await page.inner_text(row)
    await page.screenshot(path=str(artifacts_dir / "dashboard_batch_full.png"), full_page=True)
    await page.locator("#batch-panel").screenshot(path=str(artifacts_dir / "dashboard_batch.png"))
    # A running run whose driver went quiet is marked stale (limit shortened on the page).
    await page.evaluate("window.dmcs.state.batch.staleSeconds = 0.5")
    await page.wait_for_selector(f'{run}[data-stale="true"] .badge.stale', timeout=5000)
    assert await page.query_selector('tr[data-run="catchup-20261121"][data-stale="true"]') is None


async def test_page_folds_batch_events_as_the_server_does(page: Any) -> None:
    """static/batch.js mirrors commands/dashboard/batch.py: the same events give the same runs,
    malformed, late, evicted and over-long ones included."""
    from commands.dashboard.batch import BatchLimits, BatchRuns
    from state.events import Event

    rng = random.Random(9)
    events: list[dict[str, Any]] = []
    for i in range(40):
        run = f"r{rng.randrange(5)}"
        tai = 1000.0 + i + rng.choice([0.0, 0.0, -3.0])  # some arrive late
        if rng.random() < 0.5:
            status = rng.choice(["running", "running", "done", "exploded"])
            data = batch_progress(run, done=i, total=40, status=status)
            events.append({"topic": "reprocessProgress", "tai": tai, "data": data})
        else:
            unit = rng.choice(["ccd:7/1", "region:12", "visit 7"])
            reason = rng.choice(["<i>bad</i>", "y" * 700, "PsfFitError"])
            data = {"run": run, "unit": unit, "reason": reason, "attempt": i % 3}
            data["final"] = i % 2 == 0
            events.append({"topic": "reprocessFailure", "tai": tai, "data": data})
    limits = BatchLimits(runs=3, failures_per_run=2)
    server = BatchRuns(limits)
    for i, e in enumerate(events):
        with contextlib.suppress(ValueError, TypeError, KeyError):  # the malformed ones
            server.observe(Event("Reprocess", e["topic"], i + 1, e["tai"], e["data"], "telemetry"))
    page_fold = await page.evaluate(
        """(events) => {
            const batch = { staleSeconds: 30, limits: { runs: 3, failuresPerRun: 2 }, runs: [] };
            events.forEach((e, i) =>
                Batch.apply(batch, { component: "Reprocess", seq: i + 1, ...e }));
            return batch.runs;
        }""",
        events,
    )
    expected = server.to_json(0.0)["runs"]
    drop_stale = [{k: v for k, v in r.items() if k != "stale"} for r in page_fold]
    assert drop_stale == [{k: v for k, v in r.items() if k != "stale"} for r in expected]
    assert any(f["reason"].endswith("…") for r in expected for f in r["failures"])
