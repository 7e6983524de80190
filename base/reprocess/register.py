"""Register the raws of a simulated night directly (without replaying it through ingest).

For reprocessing a night that was simulated but never observed through the data path, and
for tests and benchmarks; the records are what ingest writes (``base.ingest_records``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from astropy.io import fits

from base.registry import DetectorRecord, ExposureRecord, RawRecord, Repository
from state.durable import sha256_hex
from state.errors import InvalidInputError


def _records(path: Path) -> tuple[RawRecord, ExposureRecord, DetectorRecord]:
    try:
        h = fits.getheader(path)
        nx, ny = (int(v) for v in str(h["DETSIZE"]).strip("[]").replace(":", ",").split(",")[1::2])
        checksum = sha256_hex(path.read_bytes())
        visit, detector, camera, obsid = (
            int(h["VISIT"]),
            int(h["DETECTOR"]),
            str(h["CAMERA"]),
            str(h["OBSID"]),
        )
        raw = RawRecord(
            visit,
            detector,
            camera,
            obsid,
            str(path.resolve()),
            checksum,
            checksum,
            path.stat().st_size,
            nx,
            ny,
            int(h["NAMPS"]),
            False,
        )
        exposure = ExposureRecord(
            visit,
            obsid,
            camera,
            int(h["DAYOBS"]),
            int(h["SEQNUM"]),
            str(h["BAND"]),
            float(h["EXPTIME"]),
            float(h["MJD-BEG"]),
            float(h["RA"]),
            float(h["DEC"]),
            int(h["FIELDID"]),
        )
        det = DetectorRecord(camera, detector, str(h["DETNAME"]), None, nx, ny)
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise InvalidInputError(f"{path} is not a readable dmcs raw: {e}") from e
    return raw, exposure, det


async def register_night_raws(repo: Repository, night_dir: Path) -> int:
    """Register every ``raws/*/*/raw_*.fits`` of the night; returns how many were new."""
    added = 0
    paths = await asyncio.to_thread(lambda: sorted(night_dir.glob("raws/*/*/raw_*.fits")))
    for path in paths:
        added += await repo.register_raw(*await asyncio.to_thread(_records, path))
    return added
