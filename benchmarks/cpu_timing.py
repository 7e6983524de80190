"""CPU timing shared by the side-by-side benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def best_cpu(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Least CPU seconds of ``repeats`` runs of ``fn`` and its last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        c0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - c0)
    return best, out
