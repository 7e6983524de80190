"""The simulated night's truth (truth.sqlite) and its match to the measured DIASources.

What a difference image can show is the change against the template. The templates hold the
static sky (stars, and variable stars at their mean magnitude) and no transients or moving
objects (summit/templates.py), so the true difference flux of a source is its flux in the visit
minus, for a variable, the flux at its mean magnitude in the band. Stars are left out: they have
nothing to detect. A truth source is detected when a DIASource of the same visit lies within
``radius_arcsec`` (1″) of it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from state.errors import InvalidInputError

AB_NJY_ZERO = 31.4  # m_AB = 31.4 - 2.5 log10(f / nJy), as in the simulator
#: The Moffat β of the simulator's PSF (summit/camera.py ``BETA``), for the true S/N.
SIM_PSF_BETA = 3.0
DIA_REQUIRED = ("visit", "ra", "dec")
DIA_OPTIONAL = {
    "detector": -1,
    "psfFlux": np.nan,
    "psfFluxErr": np.nan,
    "midpointMjdTai": np.nan,
    "band": "",
}
#: Columns kept only when given (their absence means: not known, e.g. no reliability cut).
DIA_IF_GIVEN = {"reliability": np.float64, "diaObjectId": np.int64, "ssObjectId": np.int64}


@dataclass(frozen=True)
class TruthSources:
    """The non-static truth sources of the night, one entry per (visit, object, detector)."""

    visit: NDArray[np.int64]
    detector: NDArray[np.int64]
    object_id: NDArray[np.int64]
    kind: NDArray[np.str_]
    band: NDArray[np.str_]
    ra: NDArray[np.float64]
    dec: NDArray[np.float64]
    mag: NDArray[np.float64]  # in the visit
    diff_flux_njy: NDArray[np.float64]  # visit flux minus template flux
    diff_mag: NDArray[np.float64]  # AB magnitude of |diff_flux_njy|
    x: NDArray[np.float64]  # true position on the detector (0-based pixels; ±30 px margin)
    y: NDArray[np.float64]
    flux_e: NDArray[np.float64]  # electrons in the visit
    diff_e: NDArray[np.float64]  # electrons of the difference (visit minus template)

    def __len__(self) -> int:
        return len(self.visit)

    def select(self, keep: NDArray[np.bool_]) -> TruthSources:
        return TruthSources(**{k: v[keep] for k, v in self.__dict__.items()})


_QUERY = """
SELECT s.visit, s.detector, s.object_id, s.kind, e.band, s.ra, s.dec, s.mag, s.flux_njy,
       s.x, s.y, s.flux_e, CASE e.band WHEN 'u' THEN o.u WHEN 'g' THEN o.g WHEN 'r' THEN o.r
                   WHEN 'i' THEN o.i WHEN 'z' THEN o.z WHEN 'y' THEN o.y END
FROM sources s JOIN exposures e ON e.visit = s.visit AND e.detector = s.detector
LEFT JOIN objects o ON o.object_id = s.object_id
WHERE s.kind != 'star' AND s.visit BETWEEN ? AND ?
"""


def load_truth(path: Path | str, visits: Iterable[int] | None = None) -> TruthSources:
    """Read the variable, transient and moving truth sources of ``visits`` (all if None)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"no truth database at {path}")
    wanted = sorted({int(v) for v in visits}) if visits is not None else None
    lo, hi = (wanted[0], wanted[-1]) if wanted else (-(2**62), 2**62)
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = db.execute(_QUERY, (lo, hi)).fetchall()
        finally:
            db.close()
    except sqlite3.Error as e:
        raise InvalidInputError(f"{path} is not a dmcs truth database: {e}") from e
    if visits is not None:
        keep = set(wanted or ())
        rows = [r for r in rows if r[0] in keep]
    cols = list(zip(*rows, strict=True)) if rows else [()] * 13
    flux = np.asarray(cols[8], np.float64)
    flux_e = np.asarray(cols[11], np.float64)
    kind = np.asarray(cols[3], dtype=str)
    mean_mag = np.array([np.nan if m is None else m for m in cols[12]], np.float64)
    template = np.where(kind == "variable", 10.0 ** ((AB_NJY_ZERO - mean_mag) / 2.5), 0.0)
    template = np.nan_to_num(template)
    diff = flux - template
    with np.errstate(divide="ignore"):
        diff_mag = AB_NJY_ZERO - 2.5 * np.log10(np.abs(diff))
    return TruthSources(
        visit=np.asarray(cols[0], np.int64),
        detector=np.asarray(cols[1], np.int64),
        object_id=np.asarray(cols[2], np.int64),
        kind=kind,
        band=np.asarray(cols[4], dtype=str),
        ra=np.asarray(cols[5], np.float64),
        dec=np.asarray(cols[6], np.float64),
        mag=np.asarray(cols[7], np.float64),
        diff_flux_njy=diff,
        diff_mag=diff_mag,
        x=np.asarray(cols[9], np.float64),
        y=np.asarray(cols[10], np.float64),
        flux_e=flux_e,
        diff_e=np.where(flux > 0, flux_e * diff / np.where(flux > 0, flux, 1.0), 0.0),
    )


@dataclass(frozen=True)
class BrightStars:
    """Stars (constant and variable) brighter than ``mag_max`` in a visit, per detector."""

    mag_max: float
    visit: NDArray[np.int64]
    detector: NDArray[np.int64]
    ra: NDArray[np.float64]
    dec: NDArray[np.float64]
    x: NDArray[np.float64]
    y: NDArray[np.float64]


def load_bright_stars(
    path: Path | str, visits: Iterable[int], mag_max: float = 18.0
) -> BrightStars:
    """The stars of ``visits`` brighter than ``mag_max`` (in the visit's band) from truth.sqlite."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"no truth database at {path}")
    wanted = sorted({int(v) for v in visits})
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = db.execute(
                "SELECT visit, detector, ra, dec, x, y FROM sources"
                " WHERE kind IN ('star', 'variable') AND mag < ?",
                (mag_max,),
            ).fetchall()
        finally:
            db.close()
    except sqlite3.Error as e:
        raise InvalidInputError(f"{path} is not a dmcs truth database: {e}") from e
    keep = set(wanted)
    rows = [r for r in rows if r[0] in keep]
    c = list(zip(*rows, strict=True)) if rows else [()] * 6
    return BrightStars(
        mag_max, np.asarray(c[0], np.int64), np.asarray(c[1], np.int64),
        *(np.asarray(a, np.float64) for a in c[2:]),
    )  # fmt: skip


def true_snr(
    truth: TruthSources,
    sky_e: NDArray[np.float64],
    fwhm_px: NDArray[np.float64],
    read_var_e: NDArray[np.float64] | float = 0.0,
    template_var_e: NDArray[np.float64] | float = 0.0,
) -> NDArray[np.float64]:
    """The difference-image S/N a perfect PSF fit would give each truth source.

    Noise of an optimal (PSF-weighted) measurement: the per-pixel noise of the difference —
    the visit's sky (``sky_e``, electrons per pixel) and read noise (``read_var_e``, e⁻²) plus
    the template's own noise (``template_var_e``, e⁻² per pixel in the visit's electrons: the
    template is subtracted, and its noise with it) — over the effective area 1/∫P² of the
    simulator's PSF (a Moffat of ``SIM_PSF_BETA``, 1.67 times the area of a Gaussian of the
    same FWHM) at the CCD's measured FWHM, plus the Poisson noise of the source's own visit
    electrons. Every argument is per row or a scalar.
    """
    beta = SIM_PSF_BETA
    alpha = np.asarray(fwhm_px, np.float64) / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    n_eff = np.pi * alpha**2 * (2.0 * beta - 1.0) / (beta - 1.0) ** 2
    pix = np.maximum(np.asarray(sky_e, np.float64), 0.0) + np.maximum(
        np.asarray(read_var_e, np.float64) + np.asarray(template_var_e, np.float64), 0.0
    )
    var = n_eff * pix + np.abs(truth.flux_e)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(truth.diff_e) / np.sqrt(var)


def as_diasources(data: Any) -> dict[str, np.ndarray]:
    """DIASources (structured array, mapping of columns or list of dicts) as columns."""
    if data is None:
        raise InvalidInputError("no DIASources given")
    if isinstance(data, np.ndarray) and data.dtype.names:
        cols = {n: data[n] for n in data.dtype.names}
    elif isinstance(data, Mapping):
        cols = {k: np.asarray(v) for k, v in data.items()}
    elif isinstance(data, Sequence):
        if not all(isinstance(r, Mapping) for r in data):
            raise InvalidInputError("DIASources given as a list must be a list of dicts")
        try:
            cols = {k: np.asarray([r[k] for r in data]) for k in DIA_REQUIRED}
        except KeyError as e:
            raise InvalidInputError(f"a DIASource lacks the column {e}") from e
        for k, default in DIA_OPTIONAL.items():
            if any(k in r for r in data):
                cols[k] = np.asarray([r.get(k, default) for r in data])
        for k in DIA_IF_GIVEN:
            if any(k in r for r in data):
                cols[k] = np.asarray([r.get(k, 0) for r in data])
    else:
        raise InvalidInputError(f"cannot read DIASources from a {type(data).__name__}")
    missing = [c for c in DIA_REQUIRED if c not in cols]
    if missing:
        raise InvalidInputError(f"DIASources lack the columns {missing}")
    n = len(cols["ra"])
    try:
        out = {
            "visit": np.asarray(cols["visit"], np.int64).reshape(n),
            "ra": np.asarray(cols["ra"], np.float64).reshape(n),
            "dec": np.asarray(cols["dec"], np.float64).reshape(n),
        }
        for k, default in DIA_OPTIONAL.items():
            kind = str if isinstance(default, str) else np.float64 if k != "detector" else np.int64
            out[k] = np.asarray(cols.get(k, np.full(n, default)), kind).reshape(n)
        for k, dtype in DIA_IF_GIVEN.items():
            if k in cols:
                v = np.asarray([np.nan if x is None else x for x in np.asarray(cols[k]).tolist()])
                out[k] = (np.nan_to_num(v) if dtype is np.int64 else v).astype(dtype).reshape(n)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"DIASource columns of the wrong type or length: {e}") from e
    if not (np.isfinite(out["ra"]).all() and np.isfinite(out["dec"]).all()):
        raise InvalidInputError("DIASources with non-finite ra/dec")
    return out


def unit_vectors(ra: NDArray[np.float64], dec: NDArray[np.float64]) -> NDArray[np.float64]:
    r, d = np.radians(ra), np.radians(dec)
    return np.column_stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)])


def match(
    truth: TruthSources, dia: Mapping[str, np.ndarray], radius_arcsec: float = 1.0
) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """For each truth source, the index of the nearest DIASource of its visit within the
    radius (-1 if none); and for each DIASource, whether some truth source lies that close."""
    chord = 2.0 * np.sin(np.radians(radius_arcsec / 3600.0) / 2.0)
    nearest = np.full(len(truth), -1, np.int64)
    claimed = np.zeros(len(dia["ra"]), bool)
    for v in np.intersect1d(np.unique(truth.visit), np.unique(dia["visit"])):
        ti = np.flatnonzero(truth.visit == v)
        di = np.flatnonzero(dia["visit"] == v)
        tree = cKDTree(unit_vectors(dia["ra"][di], dia["dec"][di]))
        dist, j = tree.query(unit_vectors(truth.ra[ti], truth.dec[ti]), distance_upper_bound=chord)
        hit = np.isfinite(dist)
        nearest[ti[hit]] = di[j[hit]]
        near = cKDTree(unit_vectors(truth.ra[ti], truth.dec[ti])).query(
            unit_vectors(dia["ra"][di], dia["dec"][di]), distance_upper_bound=chord
        )[0]
        claimed[di] = np.isfinite(near)
    return nearest, claimed
