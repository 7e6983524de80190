"""What a night replay reads and writes: the night to replay and the camera's DAQ staging area.

A night is either a directory written by ``dmcs simulate night`` (``manifest.json``,
``schedule.sqlite`` and, with ``--raws``, pre-rendered raws) or a bare OpSim SQLite schedule.
Raws that were not pre-rendered are rendered by the camera simulator into the staging area.
Everything is checked by :func:`open_night` before a replay starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.cameras import Camera, load_camera
from state.durable import writable_dir
from state.errors import ConfigurationError, InvalidInputError, StorageError
from summit.camera import CameraSimulator, raw_path
from summit.raw_headers import obs_id
from summit.schedule import Visit, read_schedule
from summit.sky import Sky, SkyParams

MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class StagedImage:
    """One raw in the staging area, as listed in the ``endReadout`` ``images``."""

    detector: int
    url: str
    checksum: str
    byte_size: int

    def as_payload(self) -> dict[str, object]:
        return {
            "detector": self.detector,
            "url": self.url,
            "checksum": self.checksum,
            "byteSize": self.byte_size,
        }


@dataclass(frozen=True)
class NightSource:
    """A night ready to replay: camera, seed, the visits to drive, where its raws are."""

    path: Path
    camera: Camera
    seed: int
    visits: tuple[Visit, ...]
    #: the night directory holding pre-rendered raws, or None: render them on the fly
    raws_root: Path | None
    #: (first, last) visit start MJD of the whole night: the sky's span, as when simulated
    night_span: tuple[float, float]

    def raw(self, visit: Visit, detector: int) -> Path:
        if self.raws_root is None:
            raise InvalidInputError(f"the night {self.path} has no pre-rendered raws")
        return raw_path(self.raws_root, visit, detector)

    def visit_info(self, visit: Visit) -> dict[str, Any]:
        """What a CCD's processing needs of ``visit`` (the fields of ``nextVisit`` that
        ``state.contracts.data_plane.CcdVisit`` reads), for processing the night outside a
        running system (benchmarks, truth scripts)."""
        return {
            "visit": visit.visit_id, "camera": self.camera.name, "band": visit.band,
            "ra": visit.ra, "dec": visit.dec, "rotSkyPos": visit.rot_sky_pos,
            "fieldId": visit.field_id, "startMjd": visit.mjd_start,
            "exposureTime": visit.exptime, "dayObs": visit.day_obs,
        }  # fmt: skip

    def simulator(self) -> CameraSimulator:
        """The camera simulator that renders this night's raws (same sky as ``simulate``)."""
        first, last = self.night_span
        sky = Sky(self.seed, first - 0.1, last + 0.1, SkyParams.for_camera(self.camera.sky))
        return CameraSimulator(self.camera, sky, self.seed)


def _manifest(path: Path) -> dict[str, object]:
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
    except FileNotFoundError as e:
        raise InvalidInputError(
            f"{path} is not a simulated night: no {MANIFEST_FILE} (write one with "
            "'dmcs simulate night --out DIR')"
        ) from e
    except (OSError, ValueError) as e:
        raise InvalidInputError(f"cannot read {path / MANIFEST_FILE}: {e}") from e
    if not isinstance(manifest, dict) or not {"camera", "seed", "schedule"} <= set(manifest):
        raise InvalidInputError(f"{path / MANIFEST_FILE} lacks camera, seed or schedule")
    return manifest


def _camera(name: str) -> Camera:
    try:
        return load_camera(name)
    except ConfigurationError as e:
        raise InvalidInputError(str(e)) from e


def open_night(
    path: Path, *, visits: int | None = None, camera: str | None = None, seed: int | None = None
) -> NightSource:
    """Check and load a night directory or an OpSim SQLite; first ``visits`` visits only.

    ``camera`` and ``seed`` are needed for an OpSim file (defaults ``comcam``, 1); for a night
    directory they come from its manifest and, if given, must agree with it.
    """
    path = Path(path)
    if visits is not None and visits < 1:
        raise InvalidInputError(f"visits must be at least 1, not {visits}")
    if not path.exists():
        raise InvalidInputError(f"night {path} does not exist")
    if path.is_file():
        cam = _camera(camera or "comcam")
        schedule = read_schedule(path, visits)
        span = (schedule[0].mjd_start, schedule[-1].mjd_start)
        return NightSource(path, cam, 1 if seed is None else seed, schedule, None, span)
    manifest = _manifest(path)
    for given, key in ((camera, "camera"), (seed, "seed")):
        if given is not None and given != manifest[key]:
            raise InvalidInputError(
                f"{key} {given!r} disagrees with the night's manifest ({manifest[key]!r})"
            )
    cam = _camera(str(manifest["camera"]))
    whole = read_schedule(path / str(manifest["schedule"]))
    schedule = whole[:visits] if visits is not None else whole
    raws = path if manifest.get("raws") else None
    span = (whole[0].mjd_start, whole[-1].mjd_start)
    source = NightSource(path, cam, int(str(manifest["seed"])), schedule, raws, span)
    if source.raws_root is not None:
        missing = [
            source.raw(v, d.id)
            for v in schedule
            for d in cam.detectors
            if not source.raw(v, d.id).is_file()
        ]
        if missing:
            raise InvalidInputError(
                f"{len(missing)} pre-rendered raw(s) of the night are missing, e.g. {missing[0]}"
            )
    return source


def check_staging(staging: Path) -> Path:
    """Create the staging area if needed; ``InvalidInputError`` if it is not writable."""
    try:
        return writable_dir(staging)
    except OSError as e:
        raise InvalidInputError(f"staging directory {staging} is not writable: {e}") from e


def staged_path(staging: Path, camera: Camera, visit: Visit, detector: int) -> Path:
    """``<staging>/<imageName>/<imageName>_<raft_sensor>.fits`` (Rubin's raw file name)."""
    name = obs_id(camera, visit)
    return staging / name / f"{name}_{camera.detector(detector).name}.fits"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def describe(path: Path, detector: int) -> StagedImage:
    """Checksum and size of a staged file."""
    try:
        return StagedImage(detector, path.as_uri(), _sha256(path), path.stat().st_size)
    except OSError as e:
        raise StorageError(f"cannot read staged raw {path}: {e}") from e


def stage_raw(source: Path, dest: Path, detector: int) -> StagedImage:
    """Put ``source`` at ``dest`` (hard link on one filesystem, else copy); return its entry."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)
        try:
            os.link(source, dest)
        except OSError:
            tmp = dest.with_name(dest.name + ".part")
            shutil.copyfile(source, tmp)
            tmp.replace(dest)
    except OSError as e:
        raise StorageError(f"cannot stage raw {source} to {dest}: {e}") from e
    return describe(dest, detector)


def render_raw(sim: CameraSimulator, visit: Visit, detector: int, dest: Path) -> StagedImage:
    """Render one raw straight into the staging area (what a camera's DAQ does)."""
    sim.write_raw(visit, detector, dest)
    return describe(dest, detector)
