"""Registers the products of a simulated night (``dmcs simulate night --out DIR``).

Layout (docs/simulation.md): ``manifest.json`` names the camera; ``calibs/det<NNN>/`` holds
``bias``, ``dark``, ``bpm``, ``flat_<band>`` FITS and ``crosstalk.json``; templates are
``templates/<band>/field<NNNN>/det<NNN>.fits``; the field centres come from the OpSim
``schedule.sqlite`` (``target = 'field<NNNN>'``, ``fieldRA``, ``fieldDec``); the night's
``truth.sqlite`` is the camera's reference catalogue (named ``truth``). Calibrations of the
simulation are valid for all time. Registering twice adds nothing; a product registered
before with another path or checksum (the night re-simulated or moved) is re-pointed at the
file now there, and counted as ``replaced``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
from pathlib import Path

from astropy.io import fits

from base.registry.records import CalibRecord, DetectorRecord, RefcatRecord, TemplateRecord
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


def _refcat_objects(path: Path) -> int:
    """Rows of the catalogue's ``objects`` table; a file without one is not a refcat."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return int(db.execute("SELECT COUNT(*) FROM objects").fetchone()[0])
    except sqlite3.Error as e:
        raise InvalidInputError(f"{path} is not a reference catalogue: {e}") from e


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
    """Register detectors, calibrations, templates and the refcat of a night; rows added, and
    products ``replaced``."""
    manifest_path = directory / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        camera = load_camera(str(manifest["camera"]))
    except (OSError, ValueError, KeyError) as e:
        raise InvalidInputError(f"{manifest_path} is not a simulated-night manifest: {e}") from e
    added = {"detectors": 0, "calibrations": 0, "templates": 0, "refcats": 0, "replaced": 0}

    async def put(table: str, product: CalibRecord | TemplateRecord | RefcatRecord) -> None:
        how = await repo.put_product(product)
        if how != "same":
            added[table if how == "added" else "replaced"] += 1

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
        await put("calibrations", calib)
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
        await put("templates", template)
    truth = directory / "truth.sqlite"
    if truth.is_file():
        checksum, size, _, _ = await asyncio.to_thread(_file_facts, truth)
        n_objects = await asyncio.to_thread(_refcat_objects, truth)
        refcat = RefcatRecord(camera.name, "truth", str(truth.resolve()), checksum, size, n_objects)
        await put("refcats", refcat)
    return added
