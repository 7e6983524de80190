"""Night driver figures, printed as JSON: how far behind its schedule the replay falls.

Drives a simulated ``mini`` night (pre-rendered raws, then rendered on the fly) through a real
system (Ray, gateway, HeaderService) at a given speed and reports events sent, the worst and
mean lateness of a send, and the process's CPU milliseconds per event (driver and gateway
share the process). Target: the replay is never held back: the worst lateness of a send stays
under the compressed readout time (2 s / speed).

    python benchmarks/night_driver.py [--visits 6] [--speed 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from commands.client import Client
from commands.night_driver import NightDriver
from commands.server import serve
from config.system import GatewayConfig, SystemConfig
from state.states import State
from summit.simulation import plan_night, run_night

TOKEN = "bench-ocs-token"


async def drive(url: str, night: Path, staging: Path, speed: float) -> dict[str, Any]:
    async with Client(url, token=TOKEN) as client:
        await client.set_state("HeaderService", State.ENABLED)
        driver = NightDriver(client, night, staging, speed=speed)
        cpu = time.process_time()
        summary = await driver.run()
        cpu = time.process_time() - cpu
    return {
        "ok": summary.ok,
        "rendered_on_the_fly": summary.rendered_on_the_fly,
        "visits": summary.visits_sent,
        "ccds_staged": summary.ccds_staged,
        "events": summary.events_sent,
        "wall_s": round(summary.duration_s, 2),
        "max_lateness_s": round(summary.max_lateness_s, 4),
        "mean_lateness_s": round(summary.mean_lateness_s, 5),
        "process_cpu_ms_per_event": round(cpu / summary.events_sent * 1e3, 3),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rendered, bare = root / "rendered", root / "bare"
        run_night(plan_night("mini", args.visits, 1, rendered), raws=True, templates=False)
        run_night(plan_night("mini", args.visits, 1, bare), calibs=False, templates=False)
        tokens = root / "tokens.toml"
        tokens.write_text(f'[tokens]\n"{TOKEN}" = "ocs"\n')
        config = SystemConfig.model_validate(
            {
                "name": "bench-driver",
                "data_dir": root / "var",
                "gateway": GatewayConfig(tokens_file=tokens, port=0),
                "components": [
                    {
                        "name": "HeaderService",
                        "class": "summit.header_service:HeaderService",
                        "authorized": ["ocs"],
                    }
                ],
            }
        )
        async with serve(config, port=0) as running:
            pre = await drive(running.ws_url, rendered, root / "daq1", args.speed)
            fly = await drive(running.ws_url, bare, root / "daq2", args.speed)
    return {
        "benchmark": "night_driver",
        "camera": "mini",
        "speed": args.speed,
        "readout_budget_s": round(2.0 / args.speed, 4),
        "prerendered": pre,
        "on_the_fly": fly,
        "note": "wall-clock lateness on a shared 2-core machine; CPU includes the gateway",
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=6)
    parser.add_argument("--speed", type=float, default=50.0)
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
