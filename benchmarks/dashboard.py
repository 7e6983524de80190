"""Dashboard load figures, printed as JSON (DMS-REQ-0194: 300 simultaneous dashboard users).

Runs a workload twice on the same system: alone, then while N dashboard connections are open.
Each connection behaves like the page: it opens the WebSocket with the JSON subprotocol
(``dmcs.v1.json``), subscribes to the topics the page shows (``PAGE_TOPICS``), fetches
``/api/v1/dashboard/snapshot`` once subscribed, and parses every frame. Reported: the
dashboards' update delay (event publish TAI → frame parsed in the dashboard process)
p50/p95/max, the events they lost (holes in each topic's sequence, in whatever order they
came) and the gateway's drops, and the workload's own figures with and without the
dashboards, with their ratio.

The workload is pluggable (``--workload module:function``, an async callable taking the
:class:`~commands.server.RunningSystem` and the seconds to run, returning a dict with a
``latency_p95_s`` figure). ``--replay DIR`` measures what the issue asks for: the real-time
replay's alert latency (a ``mini`` night at speed 10 through the whole system, once alone and
once with the dashboards, see ``replay_load.py``). Without it the workload is a **stand-in**:
command round trips (``setLogLevel``) and OCS
``predictedSchedule`` telemetry (a topic every dashboard shows) published through the gateway
at a steady rate, whose "latency" is the delivery time of that telemetry to an independent
subscriber (publish → gateway → bus → gateway →
client), i.e. the path every pipeline event also takes.

The dashboards run in a separate process so that they do not share the gateway's event loop.
On the shared 2-core development machine the dashboards' own JSON parsing competes with the
gateway and Ray for the same cores, so the delays include that queueing.

    python benchmarks/dashboard.py [--connections 300] [--seconds 15] [--workload mod:fn]
    python benchmarks/dashboard.py --replay var/bench/dashboard
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from commands.client import Client
from commands.dashboard.service import PAGE_TOPICS
from commands.server import RunningSystem, serve
from config.system import SystemConfig, load_system_config
from state.clock import tai_now

OCS_TOKEN = "dev-ocs-token"
DEFAULT_WORKLOAD = "standin"
Workload = Callable[[RunningSystem, float], Awaitable[dict[str, Any]]]


def percentiles(samples: list[float], scale: float = 1.0) -> dict[str, float | int | None]:
    if not samples:
        return {"p50": None, "p95": None, "max": None, "count": 0}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * scale, 3)

    return {"p50": at(0.5), "p95": at(0.95), "max": at(1.0), "count": len(ordered)}


def plan(n: int) -> list[dict[str, Any]]:
    """Three visits of a predicted schedule: a small event every page shows."""
    return [
        {"visit": n + i, "startMjd": 61000.2 + (n + i) * 4e-4, "ra": (n * 3.7) % 360,
         "dec": -30.0, "band": "r", "exposureTime": 30.0, "fieldId": n % 100}
        for i in range(3)
    ]  # fmt: skip


async def standin_workload(running: RunningSystem, seconds: float) -> dict[str, Any]:
    """Command round trips and ``predictedSchedule`` telemetry (shown by every dashboard) at
    ~25 Hz each; the telemetry's delivery latency to an independent subscriber."""
    delivery: list[float] = []
    trips: list[float] = []
    async with (
        Client(running.ws_url, token=OCS_TOKEN) as ocs,
        Client(running.ws_url) as observer,
    ):

        async def observe() -> None:
            async for event in observer.subscribe(topics=["predictedSchedule"], snapshot=False):
                delivery.append(tai_now() - event.tai)

        async with asyncio.TaskGroup() as tg:
            watcher = tg.create_task(observe())
            await asyncio.sleep(0.5)
            component = next(iter(running.system.components))
            end = time.monotonic() + seconds
            n = 0
            while time.monotonic() < end:
                t0 = time.perf_counter()
                await ocs.command(component, "setLogLevel", level=20)
                trips.append(time.perf_counter() - t0)
                n += 1
                await ocs.send_telemetry("predictedSchedule", visits=plan(n))
                await asyncio.sleep(0.04)
            await asyncio.sleep(1.0)
            watcher.cancel()
    return {
        "workload": "stand-in: setLogLevel round trips + predictedSchedule delivery",
        "commands": len(trips),
        "command_rtt_ms": percentiles(trips, 1e3),
        "telemetry_sent": n,
        "telemetry_delivery_ms": percentiles(delivery, 1e3),
        "latency_p95_s": percentiles(delivery)["p95"],
    }


async def dashboards(url: str, count: int, seconds: float) -> dict[str, Any]:
    """``count`` page-like connections for ``seconds`` after all are connected."""
    http = url.replace("ws://", "http://").rsplit("/ws", 1)[0]
    delays: list[float] = []
    frames = [0] * count
    holes = [0] * count
    dropped = [0] * count
    ready = asyncio.Event()
    connected = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def page(i: int) -> None:
            nonlocal connected
            seen: dict[str, set[int]] = {}
            async with session.ws_connect(url, protocols=("dmcs.v1.json",), max_msg_size=0) as ws:
                subscribe = {"v": 1, "op": "subscribe", "id": 1, "topics": list(PAGE_TOPICS)}
                await ws.send_str(json.dumps(subscribe))
                try:
                    async for message in ws:
                        frame = json.loads(message.data)
                        frames[i] += 1
                        if frame["op"] == "subscribed":  # as the page: snapshot after subscribing
                            async with session.get(f"{http}/api/v1/dashboard/snapshot") as r:
                                await r.json()
                            connected += 1
                            if connected == count:
                                ready.set()
                        if frame["op"] == "dropped":
                            dropped[i] = frame["count"]
                        if frame["op"] != "event" or frame.get("snapshot"):
                            continue
                        event = frame["event"]
                        key = f"{event['component']}/{event['topic']}"
                        seen.setdefault(key, set()).add(event["seq"])
                        if ready.is_set():
                            delays.append(tai_now() - event["tai"])
                finally:
                    # Lost = holes in each topic's range, whatever order the events came in.
                    holes[i] = sum(max(s) - min(s) + 1 - len(s) for s in seen.values())

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(page(i)) for i in range(count)]
            await asyncio.wait_for(ready.wait(), 120)
            print("ready", flush=True)
            await asyncio.sleep(seconds)
            for task in tasks:
                task.cancel()
    return {
        "connections": count,
        "seconds": seconds,
        "frames": sum(frames),
        "frames_per_connection_per_s": round(sum(frames) / count / seconds, 1),
        "update_delay_ms": percentiles(delays, 1e3),
        "sequence_holes": sum(holes),
        "server_dropped": sum(dropped),
    }


def load_workload(spec: str) -> Workload:
    if spec == DEFAULT_WORKLOAD:
        return standin_workload
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.replay:
        from replay_load import ReplayLoad  # beside this script

        load = ReplayLoad(Path(args.replay))
        with load.system("benchdash") as config:
            return await measure(config, load.run, args, "replay", load.register)
    return await measure(
        load_system_config(name="benchdash"), load_workload(args.workload), args, args.workload
    )


async def measure(
    config: SystemConfig,
    workload: Workload,
    args: argparse.Namespace,
    name: str,
    prepare: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    if prepare is not None:
        await prepare()
    async with serve(config, port=0) as running:
        await asyncio.sleep(2.0)
        alone = await workload(running, args.seconds)
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--dashboard-process",
            running.ws_url,
            "--connections",
            str(args.connections),
            "--seconds",
            str(args.seconds + 3.0),
            stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 180)
        if line.strip() != b"ready":
            raise RuntimeError(f"dashboard process did not start: {line!r}")
        await asyncio.sleep(1.0)
        loaded = await workload(running, args.seconds)
        out, _ = await child.communicate()
        fanout = json.loads(out)
    base, with_load = alone["latency_p95_s"], loaded["latency_p95_s"]
    return {
        "benchmark": "dashboard",
        "workload": name,
        "stand_in": name == DEFAULT_WORKLOAD,
        "dashboards": fanout,
        "without_dashboards": alone,
        "with_dashboards": loaded,
        "latency_p95_ratio": round(with_load / base, 2) if base and with_load else None,
        "command_rtt_p95_ratio": _ratio(loaded, alone),
        "target": "workload latency unchanged within noise with 300 dashboards connected",
    }


def _ratio(loaded: dict[str, Any], alone: dict[str, Any]) -> float | None:
    a = alone.get("command_rtt_ms", {}).get("p95")
    b = loaded.get("command_rtt_ms", {}).get("p95")
    return round(b / a, 2) if a and b else None


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workload", default=DEFAULT_WORKLOAD, help="module:async_callable")
    parser.add_argument(
        "--replay", metavar="DIR", help="workload: real-time replays of mini nights made in DIR"
    )
    parser.add_argument("--dashboard-process", metavar="URL", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    if arguments.dashboard_process:
        figures = asyncio.run(
            dashboards(arguments.dashboard_process, arguments.connections, arguments.seconds)
        )
    else:
        figures = asyncio.run(main(arguments))
    print(json.dumps(figures, indent=2))
