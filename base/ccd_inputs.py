"""Inputs of per-CCD processing: what the adapter needs from a repository, and readers.

``CcdRepository`` is the small protocol the adapter uses (file paths only).
``NightDirectoryRepository`` implements it on the layout ``dmcs simulate night --out DIR``
writes (docs/simulation.md), with the night's truth as the reference catalogue;
``ResolvedRepository`` implements it on the paths of one CCD looked up beforehand (the
CcdProcessor and the batch reprocessing ask the registry, then hand the plain
``ResolvedInputs`` to their worker); it checks each file against the checksum the registry
recorded, so a product that went missing or changed after registration is refused.
The readers turn those files into the in-memory inputs of ``algorithms.pipeline.run_ccd``;
they raise ``InvalidInputError`` on unreadable or inconsistent files. Given an
:class:`~base.input_cache.InputCache`, calibrations are decoded once per node and memory-mapped
by every worker after that (read-only arrays), and a checksum is verified once; a template is
decoded at each use (see ``read_template``).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from algorithms.geometry import AmpGeometry, CcdGeometry, Section
from algorithms.isr import Calibrations
from algorithms.pipeline import ReferenceCatalog, Template
from algorithms.wcs import TanSipWcs
from base.input_cache import InputCache
from base.tiled_fits import read_compressed_images
from config.cameras import Amplifier, Detector
from state.errors import InvalidInputError

#: m_AB = 31.4 − 2.5 log10(f / nJy)
AB_NJY_ZERO = 31.4
BANDS = "ugrizy"
_READ_ERRORS = (OSError, ValueError, TypeError, KeyError, IndexError)


@dataclass(frozen=True)
class CalibPaths:
    """Master calibrations of one detector; any may be missing (None)."""

    bias: Path | None = None
    dark: Path | None = None
    flat: Path | None = None
    bpm: Path | None = None
    crosstalk: Path | None = None


@runtime_checkable
class CcdRepository(Protocol):
    """What per-CCD processing needs from a data repository: file paths, None if absent."""

    def get_raw(self, visit: int, detector: int) -> Path | None: ...

    def get_calibs(self, detector: int, band: str, time: float) -> CalibPaths: ...

    def get_template(self, field_id: int, band: str, detector: int) -> Path | None: ...

    def get_refcat(self) -> Path | None:
        """A SQLite file with an ``objects`` table (object_id, kind, ra, dec, u..y)."""
        ...


class NightDirectoryRepository:
    """``CcdRepository`` over a ``dmcs simulate night`` output directory."""

    def __init__(self, root: Path) -> None:
        if not (root / "manifest.json").is_file():
            raise InvalidInputError(f"{root} is not a simulated night (no manifest.json)")
        self.root = root

    def get_raw(self, visit: int, detector: int) -> Path | None:
        hits = sorted(self.root.glob(f"raws/*/{visit}/raw_{visit}_{detector:03d}.fits"))
        return hits[0] if hits else None

    def get_calibs(self, detector: int, band: str, time: float) -> CalibPaths:
        d = self.root / "calibs" / f"det{detector:03d}"

        def path(name: str) -> Path | None:
            return d / name if (d / name).is_file() else None

        return CalibPaths(
            bias=path("bias.fits"), dark=path("dark.fits"), flat=path(f"flat_{band}.fits"),
            bpm=path("bpm.fits"), crosstalk=path("crosstalk.json"),
        )  # fmt: skip

    def get_template(self, field_id: int, band: str, detector: int) -> Path | None:
        p = self.root / "templates" / band / f"field{field_id:04d}" / f"det{detector:03d}.fits"
        return p if p.is_file() else None

    def get_refcat(self) -> Path | None:
        p = self.root / "truth.sqlite"
        return p if p.is_file() else None


@dataclass(frozen=True)
class ResolvedInputs:
    """The input paths of one (visit, detector), looked up in advance; None where absent."""

    visit: int
    detector: int
    raw: Path | None = None
    calibs: CalibPaths = CalibPaths()
    template: Path | None = None
    refcat: Path | None = None
    #: (path, sha256) the registry recorded for each product above (the raw aside).
    checksums: tuple[tuple[str, str], ...] = ()
    #: sha256 of the stored raw file as ingest wrote and registered it (None: not known).
    raw_checksum: str | None = None
    #: (path, reason) of each product above that registration refused.
    refused: tuple[tuple[str, str], ...] = ()


#: Files whose checksum matched, by (path, size, mtime_ns): each is hashed once per process.
_verified: dict[tuple[str, int, int], str] = {}
_MAX_VERIFIED = 4096


def verify_product(path: Path, checksum: str, cache: InputCache | None = None) -> None:
    """Raise ``InvalidInputError`` unless ``path`` exists and its sha256 is ``checksum``."""
    try:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if _verified.get(key) == checksum:
            return
        if cache is not None and cache.verified(path, checksum):
            _verified[key] = checksum
            return
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        raise InvalidInputError(f"registered product {path} cannot be read: {e}") from e
    if digest != checksum:
        raise InvalidInputError(
            f"registered product {path} is corrupt: sha256 {digest[:12]}…, "
            f"registered {checksum[:12]}…"
        )
    if len(_verified) >= _MAX_VERIFIED:
        _verified.clear()
    _verified[key] = checksum
    if cache is not None:
        cache.mark_verified(path, checksum)


class ResolvedRepository:
    """``CcdRepository`` over the ``ResolvedInputs`` of one CCD; other CCDs have nothing.

    A product is checked against its registered checksum when asked for: a missing or
    changed file raises ``InvalidInputError`` (the adapter turns it into the CCD's reason).
    """

    def __init__(self, inputs: ResolvedInputs, cache: InputCache | None = None) -> None:
        self.inputs = inputs
        self.cache = cache
        self._checksums = dict(inputs.checksums)
        self._refused = dict(inputs.refused)

    def _checked(self, path: Path | None) -> Path | None:
        if path is not None and (reason := self._refused.get(str(path))) is not None:
            raise InvalidInputError(f"registration refused: {reason}")
        if path is not None and (checksum := self._checksums.get(str(path))) is not None:
            verify_product(path, checksum, self.cache)
        return path

    def get_raw(self, visit: int, detector: int) -> Path | None:
        i = self.inputs
        return i.raw if (visit, detector) == (i.visit, i.detector) else None

    def get_calibs(self, detector: int, band: str, time: float) -> CalibPaths:
        if detector != self.inputs.detector:
            return CalibPaths()
        calibs = self.inputs.calibs
        for f in fields(calibs):
            self._checked(getattr(calibs, f.name))
        return calibs

    def get_template(self, field_id: int, band: str, detector: int) -> Path | None:
        return self._checked(self.inputs.template) if detector == self.inputs.detector else None

    def get_refcat(self) -> Path | None:
        return self._checked(self.inputs.refcat)


def amp_geometry(a: Amplifier) -> AmpGeometry:
    """The raw layout of one amplifier from the camera configuration (docs/raw_format.md)."""
    rows, cols = a.raw_shape
    par = Section(a.prescan, a.prescan + a.nx, a.ny, rows) if a.parallel_overscan else None
    return AmpGeometry(
        name=a.name,
        data=Section(a.prescan, a.prescan + a.nx, 0, a.ny),
        serial_overscan=Section(a.prescan + a.nx, cols, 0, a.ny),
        parallel_overscan=par,
        detector=Section(a.x0, a.x0 + a.nx, a.y0, a.y0 + a.ny, a.flip_x, a.flip_y),
        gain=a.gain,
        read_noise=a.read_noise,
        saturation=float(a.saturation_adu),
    )


def ccd_geometry(det: Detector) -> CcdGeometry:
    return CcdGeometry(tuple(amp_geometry(a) for a in det.amplifiers), det.nx, det.ny)


def _image(path: Path, hdu: int | str = 0) -> np.ndarray:
    try:
        with fits.open(path, memmap=False) as h:
            data = h[hdu].data
            if data is None:
                raise ValueError(f"HDU {hdu} has no data")
            return np.asarray(data)
    except _READ_ERRORS as e:
        raise InvalidInputError(f"cannot read {path}: {e}") from e


def _calibration(path: Path, name: str, cache: InputCache | None) -> np.ndarray:
    def decode() -> tuple[dict[str, np.ndarray], dict[str, object]]:
        a = _image(path)
        return {name: a.astype(np.float32) if name != "bpm" else a != 0}, {}

    arrays, _ = decode() if cache is None else cache.load(path, name, None, decode)
    return arrays[name]


def read_calibrations(
    paths: CalibPaths, det: Detector, cache: InputCache | None = None
) -> tuple[Calibrations, list[str]]:
    """Calibrations on the assembled grid, and a flag for each one that is missing."""
    shape = (det.ny, det.nx)
    flags: list[str] = []
    arrays: dict[str, np.ndarray | None] = {}
    for name in ("bias", "dark", "flat", "bpm"):
        p = getattr(paths, name)
        if p is None:
            flags.append(f"missing_calib:{name}")
            arrays[name] = None
            continue
        a = _calibration(p, name, cache)
        if a.shape != shape:
            raise InvalidInputError(f"{p}: shape {a.shape} is not the CCD's {shape}")
        arrays[name] = a
    xt = None
    if paths.crosstalk is None:
        flags.append("missing_calib:crosstalk")
    else:
        try:
            coeffs = np.asarray(json.loads(paths.crosstalk.read_text())["coefficients"], float)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InvalidInputError(f"cannot read {paths.crosstalk}: {e}") from e
        n = len(det.amplifiers)
        if coeffs.shape != (n, n):
            raise InvalidInputError(f"{paths.crosstalk}: matrix {coeffs.shape} for {n} amps")
        xt = coeffs.T  # the file is [source][victim]; the ISR wants [victim, source]
    cal = Calibrations(
        bias=arrays["bias"], dark=arrays["dark"], flat=arrays["flat"], defects=arrays["bpm"],
        crosstalk=xt,
    )  # fmt: skip
    return cal, flags


def read_template(path: Path) -> Template:
    """A template coadd in nJy (IMAGE, VARIANCE, PSF HDUs, TAN-SIP WCS in the IMAGE header),
    its arrays read-only as the input cache's calibrations are (one compiled type of each
    kernel).

    Decoded at each preload, not kept in the input cache: a field comes back tens of minutes
    and hundreds of other CCDs' templates later, past what a node's cache holds (the 20-visit
    ComCam night: no template found again in a 6 GB cache), and writing a 4k×4k template there
    cost more CPU than decoding it (~0.3 against ~0.23 core-s).
    """
    try:
        with fits.open(path, memmap=False) as h:
            cards = {k: v for k, v in h["IMAGE"].header.items() if isinstance(v, (int, float, str))}
            wcs = TanSipWcs.from_header(cards)
            psf = np.asarray(h["PSF"].data, dtype=np.float64)
        planes = read_compressed_images(path, ("IMAGE", "VARIANCE"))
        img = np.asarray(planes["IMAGE"], dtype=np.float32)
        var = np.asarray(planes["VARIANCE"], dtype=np.float32)
    except _READ_ERRORS as e:
        raise InvalidInputError(f"cannot read template {path}: {e}") from e
    if img.shape != var.shape or psf.ndim != 2 or psf.shape[0] % 2 == 0:
        raise InvalidInputError(f"template {path}: inconsistent planes")
    bad = ~np.isfinite(img) | ~np.isfinite(var)
    mask = None
    if bad.any():
        from algorithms import mask as mk

        mask = np.where(bad, mk.NO_DATA, 0).astype(mk.MASK_DTYPE)
        img[bad], var[bad] = 0.0, np.inf
    psf /= psf.sum()
    for a in (img, var, psf, mask):
        if a is not None:
            a.flags.writeable = False
    return Template(image=img, variance=var, wcs=wcs, psf=psf, calibration=1.0, mask=mask)


def read_reference_catalog(
    path: Path, band: str, ra: float, dec: float, radius_deg: float, max_mag: float = 23.0
) -> ReferenceCatalog:
    """Non-variable stars within ``radius_deg`` of (ra, dec) brighter than ``max_mag``."""
    if band not in BANDS:
        raise InvalidInputError(f"unknown band {band!r}")
    cosd = max(np.cos(np.deg2rad(dec)), 1e-3)
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            rows = db.execute(
                f"SELECT ra, dec, {band} FROM objects WHERE kind = 'star'"
                " AND dec BETWEEN ? AND ? AND ra BETWEEN ? AND ?",
                (
                    dec - radius_deg,
                    dec + radius_deg,
                    ra - radius_deg / cosd,
                    ra + radius_deg / cosd,
                ),
            ).fetchall()
    except sqlite3.Error as e:
        raise InvalidInputError(f"cannot read reference catalogue {path}: {e}") from e
    a = np.array(rows, dtype=float).reshape(-1, 3)
    a = a[np.isfinite(a).all(axis=1) & (a[:, 2] < max_mag)]
    return ReferenceCatalog(ra=a[:, 0], dec=a[:, 1], flux=10 ** ((AB_NJY_ZERO - a[:, 2]) / 2.5))


@dataclass
class RawCcd:
    """The amplifier arrays of one raw (None where an amplifier is missing) and its header."""

    amps: list[np.ndarray | None]
    header: dict[str, object]
    flags: list[str]


def read_raw(source: Path | str | fits.HDUList, det: Detector, sha256: str | None = None) -> RawCcd:
    """Amplifier arrays in camera order.

    With ``sha256`` (the file's registered checksum) the whole file, headers included, is
    verified against it; without it, the FITS checksums of its HDUs are verified where
    present. A missing or wrongly shaped amplifier HDU becomes None with a
    flag; a file that cannot be opened, or whose checksum does not match, raises
    ``InvalidInputError``.
    """
    if sha256 is not None and not isinstance(source, fits.HDUList):
        verify_product(Path(source), sha256)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AstropyUserWarning)
        try:
            if isinstance(source, fits.HDUList):
                hdul, close = source, False
            else:
                hdul, close = fits.open(source, memmap=False, checksum=sha256 is None), True
            try:
                header = dict(hdul[0].header)
                by_name = {str(h.header.get("EXTNAME", "")): h for h in hdul[1:]}
                flags: list[str] = []
                amps: list[np.ndarray | None] = []
                for a in det.amplifiers:
                    h = by_name.get(a.name)
                    data = None if h is None else h.data
                    if data is None or data.shape != a.raw_shape:
                        flags.append(f"missing_amplifier_hdu:{a.name}")
                        amps.append(None)
                        continue
                    amps.append(np.asarray(data, dtype=np.float32))
            finally:
                if close:
                    hdul.close()
        except _READ_ERRORS as e:
            raise InvalidInputError(f"cannot read raw {source}: {e}") from e
    signs = ("verification failed", "truncated")
    bad = [str(w.message) for w in caught if any(k in str(w.message).lower() for k in signs)]
    if bad:
        raise InvalidInputError(f"raw {source}: {bad[0]}")
    if all(a is None for a in amps):
        raise InvalidInputError(f"raw {source}: none of the {len(amps)} amplifiers is readable")
    return RawCcd(amps=amps, header=header, flags=flags)
