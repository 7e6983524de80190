"""When each raw passed each step of the data path: where a raw's latency goes.

The summit buffer and ingest mark, per (visit, detector), the TAI at which a raw reached each
step (hash slot taken, hashed, written, sent, stored, registered, …); their ``rpc_status``
returns the last raws' marks, and ``benchmarks/data_path.py`` turns them into per-step
figures. A bounded record: the oldest raws are dropped.
"""

from __future__ import annotations

from collections import OrderedDict

from state.clock import tai_now

Key = tuple[int, int]


class StepTimes:
    def __init__(self, keep: int = 256) -> None:
        self.keep = keep
        self._raws: OrderedDict[Key, dict[str, float]] = OrderedDict()

    def mark(self, visit: int, detector: int, step: str, when: float | None = None) -> None:
        """``step`` reached now (or at ``when``); a step marked again keeps its first time."""
        key = (visit, detector)
        marks = self._raws.get(key)
        if marks is None:
            marks = self._raws[key] = {}
            while len(self._raws) > self.keep:
                self._raws.popitem(last=False)
        marks.setdefault(step, tai_now() if when is None else when)

    def snapshot(self) -> list[dict[str, float | int]]:
        return [{"visit": v, "detector": d, **marks} for (v, d), marks in self._raws.items()]
