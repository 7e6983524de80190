"""A camera's focal plane as the dashboard draws it: every detector's name, raft and position.

Positions are the CCD centres in the focal plane (mm, ``config/cameras/``). ``slotMm`` is the
side of the square each CCD is drawn as: 86 % of the closest centre-to-centre distance (a
single CCD: its size), so that every CCD is a legible cell with a gap around it whatever the
CCDs' true size (``ccdMm``): ``lsstcam-lite``'s 5.12 mm CCDs sit at LSSTCam's 42.25 mm pitch
and would be dots at true scale; the page says when cells are not to scale.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

from config.cameras import load_camera


@cache
def focal_plane(name: str) -> dict[str, Any]:
    """JSON-ready geometry of camera ``name``; ``ConfigurationError`` for an unknown camera."""
    camera = load_camera(name)
    mm = camera.pixel_size_um / 1000.0
    dets = camera.detectors
    size = max(max(d.nx, d.ny) * mm for d in dets)
    closest = min(
        (
            math.hypot(a.fp_x_mm - b.fp_x_mm, a.fp_y_mm - b.fp_y_mm)
            for i, a in enumerate(dets)
            for b in dets[i + 1 :]
        ),
        default=size / 0.86,
    )
    return {
        "camera": camera.name,
        "slotMm": round(0.86 * closest, 3),
        "ccdMm": round(size, 3),
        "detectors": [
            {
                "id": d.id,
                "name": d.name,
                "raft": d.name.split("_")[0],
                "x": d.fp_x_mm,
                "y": d.fp_y_mm,
                "widthMm": round(d.nx * mm, 3),
                "heightMm": round(d.ny * mm, 3),
            }
            for d in dets
        ],
    }
