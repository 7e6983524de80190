"""Control-plane figures, printed as JSON.

* command round trip client → gateway → actor → CMD_COMPLETE, p50/p99 over N commands;
* S WebSocket subscribers (DMS-REQ-0194 asks for 300) receiving the heartbeats of every
  component for D seconds: delivered rate, missed heartbeats and worst lag.

The subscribers run in a separate process so that they do not share the gateway's event loop.
Targets on the 2-core machine: p50 ≤ 5 ms, p99 ≤ 25 ms; no missed heartbeat at 300.

    python benchmarks/control_plane.py [--commands 1000] [--subscribers 300] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

from commands.client import Client
from commands.server import serve
from config.system import load_system_config
from state.clock import tai_now

OCS_TOKEN = "dev-ocs-token"


async def round_trips(url: str, component: str, count: int) -> dict[str, float]:
    async with Client(url, token=OCS_TOKEN) as client:
        for _ in range(50):
            await client.command(component, "setLogLevel", level=20)
        samples = []
        for _ in range(count):
            t0 = time.perf_counter()
            await client.command(component, "setLogLevel", level=20)
            samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    return {
        "commands": count,
        "p50_ms": round(samples[len(samples) // 2], 3),
        "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 3),
        "max_ms": round(samples[-1], 3),
        "mean_ms": round(statistics.fmean(samples), 3),
    }


async def subscribers(url: str, count: int, seconds: float) -> dict[str, Any]:
    """Run ``count`` clients subscribed to heartbeats for ``seconds``; measure what arrives."""
    clients = [Client(url, reconnect=False) for _ in range(count)]
    lags: list[float] = []
    received = [0] * count
    started = asyncio.Event()

    async def listen(i: int, client: Client) -> None:
        await started.wait()
        async for event in client.subscribe(topics=["heartbeat"], snapshot=False):
            received[i] += 1
            lags.append(tai_now() - event.tai)

    for client in clients:
        await client.__aenter__()
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(listen(i, c)) for i, c in enumerate(clients)]
            started.set()
            await asyncio.sleep(seconds)
            for task in tasks:
                task.cancel()
    except* asyncio.CancelledError:
        pass
    finally:
        for client in clients:
            await client.__aexit__(None, None, None)
    missed = sum(c.gaps.missing for c in clients)
    lags.sort()
    return {
        "subscribers": count,
        "seconds": seconds,
        "heartbeats_received": sum(received),
        "delivered_per_s": round(sum(received) / seconds, 1),
        "min_per_subscriber": min(received),
        "missed_heartbeats": missed,
        "server_dropped": sum(c.server_dropped for c in clients),
        "lag_p50_ms": round(lags[len(lags) // 2] * 1e3, 2) if lags else None,
        "lag_worst_ms": round(lags[-1] * 1e3, 2) if lags else None,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    config = load_system_config(name="bench")
    async with serve(config, port=0) as running:
        component = config.components[0].name
        await asyncio.sleep(1.0)
        trips = await round_trips(running.ws_url, component, args.commands)
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--subscriber-process",
            running.ws_url,
            "--subscribers",
            str(args.subscribers),
            "--seconds",
            str(args.seconds),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await child.communicate()
        fanout = json.loads(out)
    n_components = len(config.components)
    expected = n_components * args.seconds / config.heartbeat_interval
    fanout["expected_per_subscriber"] = expected
    return {
        "benchmark": "control_plane",
        "components": n_components,
        "round_trip": trips,
        "round_trip_targets": {"p50_ms": 5.0, "p99_ms": 25.0},
        "heartbeat_fanout": fanout,
    }


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=1000)
    parser.add_argument("--subscribers", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--subscriber-process", metavar="URL", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    if arguments.subscriber_process:
        result = asyncio.run(
            subscribers(arguments.subscriber_process, arguments.subscribers, arguments.seconds)
        )
    else:
        result = asyncio.run(main(arguments))
    print(json.dumps(result, indent=2))
