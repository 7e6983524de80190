"""Camera simulator speed: one 4k x 4k LSSTCam CCD raw, and a 9-CCD (ComCam) visit, one core.

Prints JSON. ``warm`` figures have the detector's instrument signature (flat, dark) cached, as
in a night where the same CCDs render visit after visit; ``cold`` ones include building it.
Numba compilation is excluded (warm-up render on the mini camera first).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

from config.cameras import load_camera
from summit.camera import CameraSimulator
from summit.schedule import generate_schedule
from summit.sky import Sky


def _sim(name: str, n_visits: int) -> tuple[CameraSimulator, list]:
    cam = load_camera(name)
    visits = generate_schedule(cam, n_visits, seed=1)
    sky = Sky(1, visits[0].mjd_start - 0.1, visits[-1].mjd_start + 0.1)
    return CameraSimulator(cam, sky, seed=1), visits


def main() -> None:
    mini, mv = _sim("mini", 2)
    mini.render(mv[0], 0)  # compile / load the numba cache
    lsst, lv = _sim("lsstcam", 4)
    t = time.perf_counter()
    lsst.render(lv[0], 94)
    cold = time.perf_counter() - t
    warm = []
    for v in lv[1:4]:
        t = time.perf_counter()
        lsst.render(v, 94)
        warm.append(time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        lsst.write_raw(lv[1], 94, Path(tmp) / "raw.fits")
        write = time.perf_counter() - t
    com, cv = _sim("comcam", 4)
    t = time.perf_counter()
    for d in range(9):
        com.render(cv[0], d)
    visit_cold = time.perf_counter() - t
    t = time.perf_counter()
    for d in range(9):
        com.render(cv[1], d)
    visit_warm = time.perf_counter() - t
    print(
        json.dumps(
            {
                "lsstcam_ccd_render_s_warm": round(min(warm), 3),
                "lsstcam_ccd_render_s_warm_median": round(sorted(warm)[1], 3),
                "lsstcam_ccd_render_s_cold": round(cold, 3),
                "lsstcam_ccd_render_and_write_fits_s": round(write, 3),
                "visit_9ccd_comcam_render_s_warm": round(visit_warm, 3),
                "visit_9ccd_comcam_render_s_cold": round(visit_cold, 3),
                "per_ccd_target_s": 1.0,
                "cores": 1,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
