"""The real-time replay as a benchmark workload: a simulated night through a running system.

:class:`ReplayLoad` simulates one ``mini`` night of ``runs × visits`` visits, a PostgreSQL and
the night system's configuration; each call of :meth:`ReplayLoad.run` replays the next
``visits`` visits of it through the running system (so no visit is replayed twice) and
returns their alert latency (end of readout → alerts published).
"""

from __future__ import annotations

import contextlib
import math
import secrets
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from base.postgres import postgres_dsn
from commands.client import Client
from commands.replay.night_system import night_system_config, register_products
from commands.replay.runner import replay_night
from commands.server import RunningSystem
from config.system import SystemConfig, load_system_config
from summit.night_files import open_night
from summit.simulation import plan_night, run_night


class ReplayLoad:
    def __init__(self, out: Path, runs: int = 2, visits: int = 4, speed: float = 10.0) -> None:
        self.out = out
        self.speed = speed
        self.visits = visits
        self.night = out / "night"
        if not (self.night / "manifest.json").is_file():
            run_night(plan_night("mini", runs * visits, 1, self.night), raws=True)
        self.source = open_night(self.night)
        self.token = secrets.token_urlsafe(16)
        self.batch_token = secrets.token_urlsafe(16)
        self.day_obs = self.source.visits[0].day_obs
        self._next = 0
        self._config: SystemConfig | None = None

    @contextlib.contextmanager
    def system(self, name: str) -> Iterator[SystemConfig]:
        """The night system's configuration, on an embedded PostgreSQL for the duration."""
        tokens = self.out / "tokens.toml"
        tokens.write_text(f'[tokens]\n"{self.token}" = "ocs"\n"{self.batch_token}" = "batch"\n')
        with postgres_dsn(None, self.out / "pg") as dsn:
            config = night_system_config(
                load_system_config(name=name),
                dsn=dsn,
                processors=2,
                data_dir=self.out / "data",
                staging=self.out / "staging",
            )
            self.dsn = dsn
            self._config = config
            yield config.model_copy(
                update={"gateway": config.gateway.model_copy(update={"tokens_file": tokens})}
            )

    async def register(self) -> None:
        """The night's products, where the processors look them up (the registry)."""
        if self._config is None:
            raise RuntimeError("register() runs inside system()")
        await register_products(self._config, self.night)

    async def run(self, running: RunningSystem, seconds: float) -> dict[str, Any]:
        """Replay the next visits (``seconds`` is ignored: they last as long as they last)."""
        first = self._next * self.visits
        part = replace(self.source, visits=self.source.visits[first : first + self.visits])
        self._next += 1
        async with Client(running.ws_url, token=self.token) as client:
            outcome = await replay_night(
                client, part, self.out / "staging" / str(self._next), speed=self.speed
            )
        latencies = sorted(x for x in outcome.progress.latencies.values() if math.isfinite(x))
        p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else None
        return {
            "workload": f"replay of mini visits {first + 1}-{first + self.visits} at speed "
            f"{self.speed:g}",
            "complete": outcome.complete,
            "ccds": len(outcome.progress.expected),
            "alerts": outcome.progress.alerts,
            "alert_latency_p50_s": latencies[len(latencies) // 2] if latencies else None,
            "latency_p95_s": p95,
            "latencies": latencies,
            "visits": [v.visit_id for v in part.visits],
        }
