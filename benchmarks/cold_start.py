"""The first visit after start-up against the later ones, from a cold start, printed as JSON.

A ``mini`` night is simulated first (in this process, with the usual numba cache), then
replayed as a new user's first ``dmcs replay`` would run it: in a fresh process whose
``NUMBA_CACHE_DIR`` is a new empty directory, so every numba kernel of the components is
compiled in that run (the Ray workers and the CCD processors' children inherit the variable).

Figures: the time the system took to go to ENABLED (the components' ``start``, where their
warm-up happens), the first visit's latency (endReadout → the last of its alerts) against the
median of the later visits (target ≤ 1.5×; the last visit's latency says whether the later
ones were still draining a backlog the first one left), and the preload lead of every visit
(endReadout − the latest of its CCDs' preloadReady; target ≥ 0 s on every visit).

    python benchmarks/cold_start.py [--visits 6] [--speed 10] [--processors 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGET_FIRST_OVER_MEDIAN = 1.5


def _options(args: argparse.Namespace) -> Any:
    from commands.replay.options import ReplayOptions

    return ReplayOptions(
        out=args.out,
        camera=args.camera,
        visits=args.visits,
        seed=args.seed,
        speed=args.speed,
        processors=args.processors,
        progress=False,
        fresh=True,
    )


def _replay(args: argparse.Namespace) -> dict[str, Any]:
    """The replay itself (run in the fresh child process)."""
    from rich.console import Console

    from commands.replay.main import run_replay

    summary: dict[str, Any] = asyncio.run(run_replay(_options(args), Console(stderr=True)))
    return summary


def _figures(args: argparse.Namespace, summary: dict[str, Any], cache: str) -> dict[str, Any]:
    latency = summary.get("latencySummary", {})
    by_visit = {int(k): v for k, v in latency.get("visitLatency", {}).items()}
    leads = {int(k): v for k, v in latency.get("preloadLeadByVisit", {}).items()}
    visits = sorted(by_visit)
    first = by_visit[visits[0]] if visits else None
    later = [by_visit[v] for v in visits[1:]]
    median_later = statistics.median(later) if later else None
    ratio = first / median_later if first is not None and median_later else None
    return {
        "benchmark": "cold_start",
        "camera": args.camera,
        "visits": summary.get("visits"),
        "speed": args.speed,
        "processors": args.processors,
        "cores": os.cpu_count(),
        "numba_cache_dir": cache,
        "complete": summary.get("complete"),
        "ccds_processed": summary.get("ccdsProcessed"),
        "ccds_failed": summary.get("ccdsFailed"),
        "start_s": summary.get("enableSeconds"),
        "first_visit_latency_s": first,
        "later_visits_median_latency_s": median_later,
        "last_visit_latency_s": by_visit[visits[-1]] if visits else None,
        "first_over_median": ratio,
        "visit_latency_s": {str(v): by_visit[v] for v in visits},
        "preload_lead_s": {str(v): leads[v] for v in sorted(leads)},
        "min_preload_lead_s": min(leads.values()) if leads else None,
        "replay_wall_s": summary.get("wallSeconds"),
        "targets": {"first_over_median": TARGET_FIRST_OVER_MEDIAN, "preload_lead_s": 0.0},
        "meets_first_visit": ratio is not None and ratio <= TARGET_FIRST_OVER_MEDIAN,
        "meets_preload_lead": bool(leads) and min(leads.values()) >= 0.0,
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console

    from commands.replay.main import prepare_night

    asyncio.run(prepare_night(_options(args), Console(stderr=True)))
    with tempfile.TemporaryDirectory(prefix="numba-cold-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        child = [sys.executable, __file__, "--replay-child", *sys.argv[1:]]
        done = subprocess.run(child, env=env, stdout=sys.stderr, check=False)
        if done.returncode != 0:
            raise SystemExit(f"the cold replay failed (exit {done.returncode})")
        summary = json.loads((args.out / "summary.json").read_text())
        return _figures(args, summary, cache)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--camera", default="mini")
    parser.add_argument("--visits", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--speed", type=float, default=10.0)
    parser.add_argument("--processors", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("var/bench/cold_start"))
    parser.add_argument("--replay-child", action="store_true", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.replay_child:
        _replay(parsed)  # its summary is written to OUT/summary.json
    else:
        print(json.dumps(main(parsed), indent=2, default=str))
