"""The options of ``dmcs replay`` (and of the benchmarks that replay a night), checked as a
whole before anything is touched or started."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from commands.night_driver import check_speed
from commands.replay.night_system import check_processors
from commands.replay.tracker import DEFAULT_STALL_SECONDS
from config.cameras import load_camera
from config.system import check_dsn
from state.errors import ConfigurationError
from summit.night_files import open_night
from summit.schedule import read_schedule
from summit.simulation import check_visits


@dataclass(frozen=True)
class ReplayOptions:
    out: Path = Path("var/replay")
    camera: str = "mini"
    visits: int = 4
    seed: int = 1
    speed: float = 10.0
    night: Path | None = None
    opsim: Path | None = None
    processors: int = 2
    dsn: str | None = None
    address: str | None = None
    config: Path | None = None
    drain_seconds: float = 300.0
    progress: bool = True
    #: Clean the directory first even if the previous replay there could be resumed.
    fresh: bool = False
    #: Seconds without progress before the replay says what it is waiting for.
    stall_seconds: float = DEFAULT_STALL_SECONDS
    #: Seconds start-up waits for PostgreSQL, Ray and the components.
    startup_timeout: float = 120.0
    #: Ray nodes on this machine (``> 1``: a local cluster placed by role, see actors/cluster.py).
    nodes: int = 1
    #: Kill a base node when this visit (1-based) starts integrating.
    kill_node_at: int | None = None
    #: The options among ``camera``, ``visits``, ``seed`` its user gave (not defaults): with
    #: ``night`` they must agree with that night, which is replayed as it was simulated.
    given: frozenset[str] = frozenset()

    def check(self) -> None:
        """Refuse bad options before anything in ``out`` is touched or started.

        Each value is checked against the definition its user applies later (the night
        driver's speed, the simulation's visit count, the camera catalogue, the night's
        manifest), so a typo cannot clean a previous replay's results and then fail.
        """
        check_speed(self.speed)
        if self.dsn:
            check_dsn(self.dsn)
        check_processors(self.processors)
        if not self.drain_seconds >= 0:
            raise ConfigurationError(f"--drain must be >= 0 seconds, not {self.drain_seconds}")
        if self.night is not None:
            if self.opsim is not None:
                raise ConfigurationError("--night and --opsim exclude each other")
            if not self.night.is_dir():
                raise ConfigurationError(
                    f"--night {self.night} is not a directory (a simulated night; "
                    "an OpSim schedule goes to --opsim)"
                )
            source = open_night(self.night)
            night_visits = len(source.visits)
            self._agrees_with_night(source.camera.name, night_visits, source.seed)
        else:
            night_visits = self.visits
            load_camera(self.camera)
            if self.opsim is not None:
                read_schedule(self.opsim, self.visits if self.visits > 0 else None)
            else:
                check_visits(self.visits)
        if self.out.exists() and not self.out.is_dir():
            raise ConfigurationError(f"--out {self.out} exists and is not a directory")
        if self.nodes < 1:
            raise ConfigurationError(f"--nodes must be at least 1, not {self.nodes}")
        if self.nodes > 1 and self.address:
            raise ConfigurationError("--nodes starts its own cluster; it excludes --address")
        if self.kill_node_at is not None:
            if self.nodes < 3:
                raise ConfigurationError(
                    "--kill-node-at needs --nodes 3 or more (two base nodes, one to survive)"
                )
            if not 1 <= self.kill_node_at <= night_visits:
                raise ConfigurationError(
                    f"--kill-node-at {self.kill_node_at} is not a visit of the night "
                    f"(1 to {night_visits})"
                )

    def _agrees_with_night(self, camera: str, visits: int, seed: int) -> None:
        night = {"camera": camera, "visits": visits, "seed": seed}
        mine = {"camera": self.camera, "visits": self.visits, "seed": self.seed}
        wrong = [
            f"--{k} {mine[k]}" for k in sorted(self.given & night.keys()) if mine[k] != night[k]
        ]
        if wrong:
            raise ConfigurationError(
                f"--night {self.night} is replayed as it was simulated ({visits} visits of"
                f" {camera}, seed {seed}); {' and '.join(wrong)} would need another night"
                " (leave out --night to simulate one)"
            )

    def fingerprint(self) -> dict[str, Any]:
        """The options that decide what the night's data are (resume only with the same)."""
        dsn = self.dsn or ""
        return {
            "camera": self.camera,
            "visits": self.visits,
            "seed": self.seed,
            "night": str(self.night.resolve()) if self.night else None,
            "opsim": str(self.opsim.resolve()) if self.opsim else None,
            "processors": self.processors,
            "dsn": hashlib.sha256(dsn.encode()).hexdigest()[:16] if dsn else None,
            "address": self.address,
            "config": str(self.config.resolve()) if self.config else None,
            "nodes": self.nodes,
            "killNodeAt": self.kill_node_at,
        }
