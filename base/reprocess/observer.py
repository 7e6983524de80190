"""What a reprocessing run tells the world as it goes: its phases, progress and failures.

The runner calls a :class:`RunObserver`; the CLI passes one that draws the progress bar and
one that publishes the same as telemetry for the dashboard. Hooks are plain calls from the
run's event loop and must not block: an observer that does I/O queues and sends elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable


class RunObserver:
    """Does nothing; subclasses override what they need."""

    def began(self, run: str, mode: str, workers: int) -> None:
        """A run (``mode`` "release" or "catchUp") starts with ``workers`` CCDs at a time."""

    def progress(self, phase: str, done: int, total: int) -> None:
        """``done`` of ``total`` units of ``phase`` ("ccd", then "region") are finished."""

    def failure(self, unit: str, reason: str, attempt: int, final: bool) -> None:
        """An attempt at ``unit`` failed; ``final``: no more tries, it is recorded failed."""

    def ended(self, status: str) -> None:
        """The run ended "done", "failed" (some units failed) or "interrupted"."""


class Observers(RunObserver):
    """Several observers as one."""

    def __init__(self, observers: Iterable[RunObserver]) -> None:
        self.observers = tuple(observers)

    def began(self, run: str, mode: str, workers: int) -> None:
        for o in self.observers:
            o.began(run, mode, workers)

    def progress(self, phase: str, done: int, total: int) -> None:
        for o in self.observers:
            o.progress(phase, done, total)

    def failure(self, unit: str, reason: str, attempt: int, final: bool) -> None:
        for o in self.observers:
            o.failure(unit, reason, attempt, final)

    def ended(self, status: str) -> None:
        for o in self.observers:
            o.ended(status)
