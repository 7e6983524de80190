"""Camera focal planes: load, expand and validate the TOML files in ``config/cameras/``.

A camera file gives the geometry (rafts of 3 x 3 CCDs, or an explicit detector list, or
``geometry = "<camera>"`` to take another camera's rafts, with ``[raft_layouts]`` mapping a
raft's vendor to the CCD layout used, as ``lsstcam-lite`` does), the photometric system, the
pixel scale and optionally a ``[sky]`` section (the simulated sky's star and transient
densities, :class:`SkyConfig`); ``layouts.toml`` gives each CCD type's amplifier layout and the
statistics of its electronics. Per-amplifier gain, read noise, bias level, full well, the
crosstalk matrix and the defects (bad columns, hot pixels) are drawn from those statistics with
``random.Random`` seeded by the camera seed and the detector id, so a camera is the same object
on every machine. The result is a tree of frozen pydantic models, validated once.
"""

from __future__ import annotations

import random
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from state.errors import ConfigurationError

CAMERA_DIR = Path(__file__).resolve().parent / "cameras"
BANDS: tuple[str, ...] = ("u", "g", "r", "i", "z", "y")
_NON_CAMERA_FILES = {"layouts", "photometry"}
_GEOMETRY_KEYS = ("rafts", "raft_pitch_mm", "ccd_pitch_mm")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Amplifier(_Frozen):
    """One amplifier segment. Data-region origin (x0, y0) is 0-based in the assembled CCD."""

    name: str
    index: int = Field(ge=0)
    x0: int = Field(ge=0)
    y0: int = Field(ge=0)
    nx: int = Field(gt=0)
    ny: int = Field(gt=0)
    prescan: int = Field(ge=0)
    serial_overscan: int = Field(gt=0)
    parallel_overscan: int = Field(ge=0)
    flip_x: bool
    flip_y: bool
    gain: float = Field(gt=0, description="e-/ADU")
    read_noise: float = Field(gt=0, description="e- rms")
    bias_level: float = Field(gt=0, description="ADU")
    full_well: float = Field(gt=0, description="e-")
    adc_max: int = Field(gt=0)

    @property
    def raw_shape(self) -> tuple[int, int]:
        """(rows, cols) of the raw amplifier image including prescan and overscans."""
        return (self.ny + self.parallel_overscan, self.prescan + self.nx + self.serial_overscan)

    @property
    def saturation_adu(self) -> int:
        """Raw ADU (bias included) at and above which a pixel is saturated."""
        return min(self.adc_max, int(self.bias_level + self.full_well / self.gain))


class Defects(_Frozen):
    """Bad columns (x, y_start, y_stop exclusive, kind) and hot pixels (x, y, e-/s)."""

    bad_columns: tuple[tuple[int, int, int, str], ...]
    hot_pixels: tuple[tuple[int, int, float], ...]


class Detector(_Frozen):
    id: int = Field(ge=0)
    name: str
    vendor: str
    nx: int = Field(gt=0)
    ny: int = Field(gt=0)
    fp_x_mm: float
    fp_y_mm: float
    amplifiers: tuple[Amplifier, ...]
    crosstalk: tuple[tuple[float, ...], ...] = Field(
        description="crosstalk[source][victim]: victim ADU gained per ADU of source signal"
    )
    defects: Defects

    @model_validator(mode="after")
    def _check(self) -> Detector:
        n = len(self.amplifiers)
        if len(self.crosstalk) != n or any(len(row) != n for row in self.crosstalk):
            raise ValueError(f"detector {self.name}: crosstalk matrix must be {n}x{n}")
        covered = sum(a.nx * a.ny for a in self.amplifiers)
        if covered != self.nx * self.ny:
            raise ValueError(f"detector {self.name}: amplifiers do not tile the CCD")
        for a in self.amplifiers:
            if a.x0 + a.nx > self.nx or a.y0 + a.ny > self.ny:
                raise ValueError(f"detector {self.name}: amplifier {a.name} outside the CCD")
        return self


class Photometry(_Frozen):
    zeropoint: dict[str, float]
    extinction: dict[str, float]
    dark_sky: dict[str, float]

    @model_validator(mode="after")
    def _bands(self) -> Photometry:
        for table in (self.zeropoint, self.extinction, self.dark_sky):
            if set(table) != set(BANDS):
                raise ValueError(f"photometry needs exactly the bands {BANDS}")
        return self


class SkyConfig(_Frozen):
    """A camera's optional ``[sky]`` section: the sky its simulated nights look at.

    Each key set overrides the same-named knob of ``summit.sky.SkyParams`` (absent keys keep
    the high-latitude survey defaults). A toy camera with tiny CCDs points at a crowded
    field so that every CCD holds enough stars for its PSF and astrometric fit.
    """

    star_density_pole: float | None = Field(None, ge=0, description="stars/deg^2 far from b=0")
    star_density_plane: float | None = Field(None, ge=0, description="extra stars/deg^2 at b=0")
    transient_density: float | None = Field(None, ge=0, description="transients/deg^2")

    def overrides(self) -> dict[str, float]:
        """The knobs this camera sets, by ``SkyParams`` field name."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class Camera(_Frozen):
    name: str
    telescope: str
    seed: int
    pixel_size_um: float = Field(gt=0)
    pixel_scale_arcsec: float = Field(gt=0)
    distortion_k_per_deg2: float
    readout_time_s: float = Field(ge=0)
    dark_current_e_per_s: float = Field(ge=0)
    cosmic_ray_rate_per_cm2_s: float = Field(ge=0)
    photometry: Photometry
    detectors: tuple[Detector, ...]
    sky: SkyConfig = SkyConfig()

    @model_validator(mode="after")
    def _ids(self) -> Camera:
        ids = [d.id for d in self.detectors]
        if ids != list(range(len(ids))):
            raise ValueError("detector ids must be 0..n-1 in order")
        return self

    def detector(self, detector_id: int) -> Detector:
        """The detector with this id; ``ConfigurationError`` if there is none."""
        if not 0 <= detector_id < len(self.detectors):
            raise ConfigurationError(
                f"camera {self.name!r} has detectors 0..{len(self.detectors) - 1}, "
                f"not {detector_id}"
            )
        return self.detectors[detector_id]

    @property
    def field_radius_deg(self) -> float:
        """Radius of the circle (about the boresight) that holds every detector."""
        scale = self.pixel_scale_arcsec / 3600.0 / (self.pixel_size_um / 1000.0)  # deg per mm
        r = 0.0
        for d in self.detectors:
            half = 0.5 * (d.nx**2 + d.ny**2) ** 0.5 * self.pixel_size_um / 1000.0
            r = max(r, (d.fp_x_mm**2 + d.fp_y_mm**2) ** 0.5 + half)
        return r * scale


def available_cameras() -> tuple[str, ...]:
    """Names of the camera files shipped in ``config/cameras/``."""
    return tuple(
        sorted(p.stem for p in CAMERA_DIR.glob("*.toml") if p.stem not in _NON_CAMERA_FILES)
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigurationError(f"cannot read camera configuration {path}: {e}") from e


def _amplifiers(layout: dict[str, Any], rnd: random.Random) -> list[dict[str, Any]]:
    nx, ny = layout["amp_nx"], layout["amp_ny"]
    n_x, n_y = layout["n_amp_x"], layout["n_amp_y"]
    amps: list[dict[str, Any]] = []
    rows = [("C1", n_y - 1, "top")] if n_y == 2 else []
    rows.append(("C0", 0, "bottom"))
    for prefix, row, side in rows:
        for col in range(n_x):
            number = col if side == "top" else n_x - 1 - col
            amps.append(
                {
                    "name": f"{prefix}{number}",
                    "x0": col * nx,
                    "y0": row * ny,
                    "nx": nx,
                    "ny": ny,
                    "prescan": layout["prescan"],
                    "serial_overscan": layout["serial_overscan"],
                    "parallel_overscan": layout["parallel_overscan"],
                    "flip_x": layout[f"{side}_flip_x"],
                    "flip_y": layout[f"{side}_flip_y"],
                    "gain": rnd.gauss(*layout["gain"]),
                    "read_noise": abs(rnd.gauss(*layout["read_noise"])),
                    "bias_level": rnd.gauss(*layout["bias_level"]),
                    "full_well": rnd.gauss(*layout["full_well"]),
                    "adc_max": layout["adc_max"],
                }
            )
    amps.sort(key=lambda a: (a["name"][1], int(a["name"][2:])))  # C00.., C10.. readout order
    for i, a in enumerate(amps):
        a["index"] = i
    return amps


def _crosstalk(amps: list[dict[str, Any]], layout: dict[str, Any], rnd: random.Random) -> Any:
    n = len(amps)
    matrix = [[0.0] * n for _ in range(n)]
    for i, src in enumerate(amps):
        for j, vic in enumerate(amps):
            if i == j:
                continue
            neighbour = src["y0"] == vic["y0"] and abs(src["x0"] - vic["x0"]) == src["nx"]
            stats = layout["crosstalk_neighbor"] if neighbour else layout["crosstalk_far"]
            matrix[i][j] = rnd.gauss(*stats)
    return tuple(tuple(row) for row in matrix)


def _defects(nx: int, ny: int, layout: dict[str, Any], rnd: random.Random) -> dict[str, Any]:
    columns = []
    for _ in range(rnd.randint(*layout["n_bad_columns"])):
        x = rnd.randrange(8, nx - 8)
        half = layout["amp_ny"]
        y_start = 0 if rnd.random() < 0.5 else rnd.randrange(0, half // 2)
        kind = "dead" if rnd.random() < 0.5 else "hot"
        columns.append((x, y_start, min(ny, y_start + rnd.randrange(half // 4, half)), kind))
    hot = [
        (rnd.randrange(nx), rnd.randrange(ny), round(10.0 ** rnd.uniform(0.5, 3.0), 3))
        for _ in range(rnd.randint(*layout["n_hot_pixels"]))
    ]
    return {"bad_columns": tuple(columns), "hot_pixels": tuple(hot)}


def _detector(
    det_id: int, name: str, layout: dict[str, Any], x_mm: float, y_mm: float, seed: int
) -> dict[str, Any]:
    rnd = random.Random(seed * 1000 + det_id)
    amps = _amplifiers(layout, rnd)
    nx, ny = layout["amp_nx"] * layout["n_amp_x"], layout["amp_ny"] * layout["n_amp_y"]
    return {
        "id": det_id,
        "name": name,
        "vendor": layout["vendor"],
        "nx": nx,
        "ny": ny,
        "fp_x_mm": x_mm,
        "fp_y_mm": y_mm,
        "amplifiers": amps,
        "crosstalk": _crosstalk(amps, layout, rnd),
        "defects": _defects(nx, ny, layout, rnd),
    }


def _expand(raw: dict[str, Any], layouts: dict[str, Any]) -> list[dict[str, Any]]:
    seed = int(raw["seed"])
    raft_layouts: dict[str, str] = raw.get("raft_layouts", {})
    specs: list[tuple[str, str, float, float]] = []
    for raft in raw.get("rafts", []):
        rname, vendor = raft["name"], raft["vendor"]
        vendor = raft_layouts.get(vendor, vendor)
        ry, rx = int(rname[1]), int(rname[2])
        for sy in range(3):
            for sx in range(3):
                x = (rx - 2) * raw["raft_pitch_mm"] + (sx - 1) * raw["ccd_pitch_mm"]
                y = (ry - 2) * raw["raft_pitch_mm"] + (sy - 1) * raw["ccd_pitch_mm"]
                specs.append((f"{rname}_S{sy}{sx}", vendor, x, y))
    for det in raw.get("detectors", []):
        specs.append((det["name"], det["layout"], det["fp_x_mm"], det["fp_y_mm"]))
    if not specs:
        raise ConfigurationError(f"camera {raw.get('name')!r} defines no detectors")
    out = []
    for i, (name, layout_name, x, y) in enumerate(specs):
        if layout_name not in layouts:
            raise ConfigurationError(f"detector {name}: unknown layout {layout_name!r}")
        out.append(_detector(i, name, layouts[layout_name], x, y, seed))
    return out


def _with_geometry(name: str, raw: dict[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    """``raw`` with the rafts and pitches of the camera its ``geometry`` key names."""
    source = raw.pop("geometry")
    if source not in known or source == name:
        raise ConfigurationError(
            f"camera {name!r}: geometry {source!r} is not another camera of {', '.join(known)}"
        )
    base = _read_toml(CAMERA_DIR / f"{source}.toml")
    if any(k in raw for k in _GEOMETRY_KEYS) or "rafts" not in base:
        raise ConfigurationError(
            f"camera {name!r}: takes its rafts from {source!r}, which must define them "
            f"(and {name!r} must not)"
        )
    return {**raw, **{k: base[k] for k in _GEOMETRY_KEYS if k in base}}


@cache
def load_camera(name: str) -> Camera:
    """Load, expand and validate the camera ``name`` (e.g. ``"comcam"``); cached."""
    known = available_cameras()
    if name not in known:
        raise ConfigurationError(f"unknown camera {name!r}; known cameras: {', '.join(known)}")
    raw = _read_toml(CAMERA_DIR / f"{name}.toml")
    if "geometry" in raw:
        raw = _with_geometry(name, raw, known)
    layouts = _read_toml(CAMERA_DIR / "layouts.toml")
    systems = _read_toml(CAMERA_DIR / "photometry.toml")
    try:
        system = raw.pop("photometric_system")
        photometry = systems[system]
        detectors = _expand(raw, layouts)
        fields = {k: v for k, v in raw.items() if k not in {*_GEOMETRY_KEYS, "raft_layouts"}}
        fields.pop("detectors", None)
        return Camera(**fields, photometry=photometry, detectors=detectors)
    except KeyError as e:
        raise ConfigurationError(f"camera {name!r}: missing configuration key {e}") from e
    except ValidationError as e:
        raise ConfigurationError(f"camera {name!r} is invalid: {e}") from e
