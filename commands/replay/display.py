"""The terminal view of a replay: the camera's progress and the pipeline's, live."""

from __future__ import annotations

import math
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from commands.night_driver import DriveProgress
from commands.replay.watch import NightProgress


class ReplayDisplay:
    """Two bars: events sent by the camera/OCS, and CCDs finished by the pipeline."""

    def __init__(self, console: Console | None = None, enabled: bool = True) -> None:
        self._progress = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled,
        )
        self._camera = self._progress.add_task("camera", total=None, note="")
        self._pipeline = self._progress.add_task("pipeline", total=None, note="")

    def __enter__(self) -> ReplayDisplay:
        self._progress.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.__exit__(kind, error, tb)

    def drive(self, p: DriveProgress) -> None:
        self._progress.update(
            self._camera,
            completed=p.events_sent,
            total=p.events_total,
            note=f"visits read out {p.visits_sent}/{p.visits_total}, late {p.lateness_s:.1f} s",
        )

    def pipeline(self, p: NightProgress) -> None:
        latencies = sorted(x for x in p.latencies.values() if math.isfinite(x))
        median = f"{latencies[len(latencies) // 2]:.1f} s" if latencies else "-"
        self._progress.update(
            self._pipeline,
            completed=len(p.finished & p.expected),
            total=len(p.expected) or None,
            note=f"ingested {len(p.ingested)}, failed {len(p.failed)}, alerts {p.alerts}, "
            f"latency p50 {median}",
        )
