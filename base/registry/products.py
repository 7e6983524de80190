"""Registers the products of a simulated night (``dmcs simulate night --out DIR``).

Layout (docs/simulation.md): ``manifest.json`` names the camera; ``calibs/det<NNN>/`` holds
``bias``, ``dark``, ``bpm``, ``flat_<band>`` FITS and ``crosstalk.json``; templates are
``templates/<band>/field<NNNN>/det<NNN>.fits``; the field centres come from the OpSim
``schedule.sqlite`` (``target = 'field<NNNN>'``, ``fieldRA``, ``fieldDec``); the night's
``truth.sqlite`` is the camera's reference catalogue (named ``truth``). Calibrations of the
simulation are valid for all time. Registering twice adds nothing; a product registered
before with another path or checksum (the night re-simulated or moved) is re-pointed at the
file now there, and counted as ``replaced``.

A product that cannot be read, or is not what its name says (a FITS file astropy cannot open,
a catalogue without ``objects``), is refused: logged with the reason, counted as ``refused``,
and recorded with that reason (``refused``), so that a CCD needing it fails with the reason
(``calibs_unreadable``, ``template_unreadable``) instead of passing for one that never had it.
The rest of the night is registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import sqlite3
from pathlib import Path

from astropy.io import fits

from base.registry.records import CalibRecord, DetectorRecord, RefcatRecord, TemplateRecord
from base.registry.repository import Repository
from config.cameras import Camera, load_camera
from state.durable import sha256_hex
from state.errors import InvalidInputError

log = logging.getLogger(__name__)

_CALIB = re.compile(r"^(bias|dark|bpm|flat_(?P<band>[ugrizy])|crosstalk)\.(fits|json)$")


def _file_facts(path: Path, hdu: str | int = 0) -> tuple[str, int, int | None, int | None]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InvalidInputError(f"{path} cannot be read: {e}") from e
    nx = ny = None
    if path.suffix == ".fits":
        try:
            with fits.open(path) as hdul:
                shape = hdul[hdu].shape
        except (OSError, KeyError, ValueError, IndexError, TypeError) as e:
            raise InvalidInputError(f"{path} is not a readable FITS product: {e}") from e
        if len(shape) == 2:
            ny, nx = int(shape[0]), int(shape[1])
    return sha256_hex(data), len(data), nx, ny


class _Facts:
    """What registration learnt of one file: its facts, or why it refused it."""

    def __init__(self, path: Path, hdu: str | int = 0) -> None:
        self.refused: str | None = None
        try:
            self.checksum, self.size, self.nx, self.ny = _file_facts(path, hdu)
        except InvalidInputError as e:
            self.refused = str(e)
            self.checksum, self.size, self.nx, self.ny = "", 0, None, None
            log.warning("registration refused %s: %s", path, e)


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


def night_camera(directory: Path) -> Camera:
    """The camera a simulated night's ``manifest.json`` names; a directory without one holds
    no night (InvalidInputError)."""
    manifest_path = directory / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        return load_camera(str(manifest["camera"]))
    except (OSError, ValueError, KeyError) as e:
        raise InvalidInputError(f"{manifest_path} is not a simulated-night manifest: {e}") from e


async def register_night(repo: Repository, directory: Path) -> dict[str, int]:
    """Register detectors, calibrations, templates and the refcat of a night; rows added,
    products ``replaced``, and products ``refused`` (each logged with its reason)."""
    camera = night_camera(directory)
    added = {
        "detectors": 0, "calibrations": 0, "templates": 0, "refcats": 0, "replaced": 0,
        "refused": 0,
    }  # fmt: skip

    async def put(table: str, product: CalibRecord | TemplateRecord | RefcatRecord) -> None:
        how = await repo.put_product(product)
        if product.refused is not None:
            added["refused"] += 1
        elif how != "same":
            added[table if how == "added" else "replaced"] += 1

    for det in camera.detectors:
        record = DetectorRecord(camera.name, det.id, det.name, det.vendor, det.nx, det.ny)
        added["detectors"] += await repo.register_detector(record)
    for path in sorted((directory / "calibs").glob("det*/*")):
        m = _CALIB.match(path.name)
        det_match = re.fullmatch(r"det(\d+)", path.parent.name)
        if m is None or det_match is None:
            continue
        facts = await asyncio.to_thread(_Facts, path)
        kind = "flat" if m.group("band") else path.stem
        calib = CalibRecord(
            camera=camera.name,
            detector=int(det_match.group(1)),
            calib_type=kind,
            band=m.group("band") or "",
            valid_start=float("-inf"),
            valid_end=float("inf"),
            path=str(path.resolve()),
            checksum=facts.checksum,
            byte_size=facts.size,
            nx=facts.nx,
            ny=facts.ny,
            refused=facts.refused,
        )
        await put("calibrations", calib)
    centres = _field_centres(directory / "schedule.sqlite")
    for path in sorted((directory / "templates").glob("*/field*/det*.fits")):
        field = int(path.parent.name.removeprefix("field"))
        band = path.parent.parent.name
        facts = await asyncio.to_thread(_Facts, path, "IMAGE")
        if field not in centres and facts.refused is None:
            try:
                header = await asyncio.to_thread(fits.getheader, path, "IMAGE")
                centres[field] = (float(header["CRVAL1"]), float(header["CRVAL2"]))
            except (OSError, KeyError, ValueError, TypeError) as e:
                facts.refused = f"{path} has no readable field centre: {e}"
                log.warning("registration refused %s: %s", path, facts.refused)
        ra, dec = centres.get(field, (math.nan, math.nan))
        template = TemplateRecord(
            camera=camera.name,
            field_id=field,
            band=band,
            detector=int(path.stem.removeprefix("det")),
            ra=ra,
            dec=dec,
            path=str(path.resolve()),
            checksum=facts.checksum,
            byte_size=facts.size,
            nx=facts.nx,
            ny=facts.ny,
            refused=facts.refused,
        )
        await put("templates", template)
    truth = directory / "truth.sqlite"
    if truth.is_file():
        facts = await asyncio.to_thread(_Facts, truth)
        n_objects = None
        if facts.refused is None:
            try:
                n_objects = await asyncio.to_thread(_refcat_objects, truth)
            except InvalidInputError as e:
                facts.refused = str(e)
                log.warning("registration refused %s: %s", truth, e)
        refcat = RefcatRecord(
            camera.name, "truth", str(truth.resolve()), facts.checksum, facts.size, n_objects,
            refused=facts.refused,
        )  # fmt: skip
        await put("refcats", refcat)
    return added
