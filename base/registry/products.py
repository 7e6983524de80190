"""Registers the products of a simulated night (``dmcs simulate night --out DIR``).

Layout (docs/simulation.md): ``manifest.json`` names the camera; ``calibs/det<NNN>/`` holds
``bias``, ``dark``, ``bpm``, ``flat_<band>`` FITS and ``crosstalk.json``; templates are
``templates/<band>/field<NNNN>/det<NNN>.fits``; the field centres come from the OpSim
``schedule.sqlite`` (``target = 'field<NNNN>'``, ``fieldRA``, ``fieldDec``). Calibrations of
the simulation are valid for all time. Registering twice adds nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
from pathlib import Path

from astropy.io import fits

from base.registry.records import CalibRecord, DetectorRecord, TemplateRecord
from base.registry.repository import Repository
from config.cameras import load_camera
from state.durable import sha256_hex
from state.errors import InvalidInputError

_CALIB = re.compile(r"^(bias|dark|bpm|flat_(?P<band>[ugrizy])|crosstalk)\.(fits|json)$")


def _file_facts(path: Path, hdu: str | int = 0) -> tuple[str, int, int | None, int | None]:
    data = path.read_bytes()
    nx = ny = None
    if path.suffix == ".fits":
        try:
            with fits.open(path) as hdul:
                shape = hdul[hdu].shape
        except (OSError, KeyError, ValueError) as e:
            raise InvalidInputError(f"{path} is not a readable FITS product: {e}") from e
        if len(shape) == 2:
            ny, nx = int(shape[0]), int(shape[1])
    return sha256_hex(data), len(data), nx, ny


def _field_centres(schedule: Path) -> dict[int, tuple[float, float]]:
    if not schedule.is_file():
        return {}
    try:
        with contextlib.closing(sqlite3.connect(schedule)) as db:
            rows = db.execute("SELECT target, fieldRA, fieldDec FROM observations").fetchall()
    except sqlite3.Error as e:
        raise InvalidInputError(f"cannot read the schedule {schedule}: {e}") from e
    centres: dict[int, tuple[float, float]] = {}
    for target, ra, dec in rows:
        m = re.fullmatch(r"field(\d+)", str(target))
        if m:
            centres.setdefault(int(m.group(1)), (float(ra), float(dec)))
    return centres


async def register_night(repo: Repository, directory: Path) -> dict[str, int]:
    """Register detectors, calibrations and templates of a night; returns rows added."""
    manifest_path = directory / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        camera = load_camera(str(manifest["camera"]))
    except (OSError, ValueError, KeyError) as e:
        raise InvalidInputError(f"{manifest_path} is not a simulated-night manifest: {e}") from e
    added = {"detectors": 0, "calibrations": 0, "templates": 0}
    for det in camera.detectors:
        record = DetectorRecord(camera.name, det.id, det.name, det.vendor, det.nx, det.ny)
        added["detectors"] += await repo.register_detector(record)
    for path in sorted((directory / "calibs").glob("det*/*")):
        m = _CALIB.match(path.name)
        det_match = re.fullmatch(r"det(\d+)", path.parent.name)
        if m is None or det_match is None:
            continue
        checksum, size, nx, ny = await asyncio.to_thread(_file_facts, path)
        kind = "flat" if m.group("band") else path.stem
        calib = CalibRecord(
            camera=camera.name,
            detector=int(det_match.group(1)),
            calib_type=kind,
            band=m.group("band") or "",
            valid_start=float("-inf"),
            valid_end=float("inf"),
            path=str(path.resolve()),
            checksum=checksum,
            byte_size=size,
            nx=nx,
            ny=ny,
        )
        added["calibrations"] += await repo.register_calib(calib)
    centres = _field_centres(directory / "schedule.sqlite")
    for path in sorted((directory / "templates").glob("*/field*/det*.fits")):
        field = int(path.parent.name.removeprefix("field"))
        band = path.parent.parent.name
        checksum, size, nx, ny = await asyncio.to_thread(_file_facts, path, "IMAGE")
        if field not in centres:
            header = await asyncio.to_thread(fits.getheader, path, "IMAGE")
            centres[field] = (float(header["CRVAL1"]), float(header["CRVAL2"]))
        ra, dec = centres[field]
        template = TemplateRecord(
            camera=camera.name,
            field_id=field,
            band=band,
            detector=int(path.stem.removeprefix("det")),
            ra=ra,
            dec=dec,
            path=str(path.resolve()),
            checksum=checksum,
            byte_size=size,
            nx=nx,
            ny=ny,
        )
        added["templates"] += await repo.register_template(template)
    return added
