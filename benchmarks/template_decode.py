"""Template decoding at a preload: the product's tile decoder beside astropy's; prints JSON.

Every template of a ``comcam`` night simulated by the product (``--night`` to use one already
simulated) is read as a CCD's preload reads it (``base.ccd_inputs.read_template``: the tile
decoder of ``base/tiled_fits.py`` + ``algorithms/rice.py``, the blank-pixel mask) and, as the
peer, by astropy (the IMAGE and VARIANCE planes' ``.data``: its per-tile cfitsio decoder).
CPU seconds per template are the best of ``--repeats`` for each, in this one process keeping
freed heap as the CCD worker does; the pixels are compared bit for bit.

    PYTHONPATH=. python benchmarks/template_decode.py [--night DIR] [--limit 40]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from base.ccd_inputs import read_template
from base.heap import keep_freed_memory
from base.tiled_fits import warm_up_decoder
from benchmarks.cpu_timing import best_cpu

CAMERA = "comcam"


def _astropy_planes(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with fits.open(path, memmap=False) as h:
        return np.asarray(h["IMAGE"].data), np.asarray(h["VARIANCE"].data)


def _same(mine: np.ndarray, theirs: np.ndarray, ok: np.ndarray) -> bool:
    """Bit for bit on ``ok`` (the product masks blank pixels: image 0, variance inf)."""
    return bool(np.array_equal(np.asarray(mine)[ok].view(np.uint32), theirs[ok].view(np.uint32)))


def measure(templates: list[Path], repeats: int) -> dict[str, Any]:
    warm_up_decoder()
    ours, peer, identical = [], [], 0
    for path in templates:
        t_ours, template = best_cpu(lambda p=path: read_template(p), repeats)
        t_peer, (image, variance) = best_cpu(lambda p=path: _astropy_planes(p), repeats)
        ours.append(t_ours)
        peer.append(t_peer)
        ok = np.isfinite(image) & np.isfinite(variance)
        identical += _same(template.image, image, ok) and _same(template.variance, variance, ok)
    mean_ours, mean_peer = float(np.mean(ours)), float(np.mean(peer))
    return {
        "templates": len(templates),
        "pixels_per_template": int(image.size),
        "dmcs_cpu_s_per_template": round(mean_ours, 4),
        "peer": {"astropy_cpu_s_per_template": round(mean_peer, 4)},
        "speedup_vs_astropy": round(mean_peer / mean_ours, 2),
        "bit_identical": identical,
        "all_bit_identical": identical == len(templates),
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    keep_freed_memory()
    workdir = Path(tempfile.mkdtemp(prefix="dmcs-template-bench-"))
    try:
        night = args.night
        sim_s = None
        if night is None:
            from summit.simulation import plan_night, run_night

            began = time.perf_counter()
            night = workdir / "night"
            run_night(plan_night(CAMERA, args.visits, args.seed, night), raws=False)
            sim_s = round(time.perf_counter() - began, 1)
        templates = sorted(night.glob("templates/*/*/det*.fits"))[: args.limit]
        if not templates:
            raise SystemExit(f"no templates under {night}/templates")
        return {"benchmark": "template_decode", "night": str(night), "simulation_s": sim_s,
                **measure(templates, args.repeats)}  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--night", type=Path, default=None, help="a simulated night (default: simulate)")
    p.add_argument("--visits", type=int, default=4, help="visits of the simulated night")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--limit", type=int, default=40, help="at most this many templates")
    p.add_argument("--repeats", type=int, default=2)
    return p


if __name__ == "__main__":
    print(json.dumps(main(_parser().parse_args()), indent=2))
