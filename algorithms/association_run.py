"""One CCD's association step, pure: moving objects first, then DIAObjects, then new objects.

Order (as Rubin's ap_association + ssoAssociation): DIASources within ``ss_radius_arcsec`` of
a known moving object's predicted position are associated one-to-one with it and become
SSSources (they do not touch DIAObjects); the rest are matched one-to-one to the preloaded
DIAObjects within ``radius_arcsec``; unmatched sources that pass the quality cuts (or, with a
trained reliability model, its alert threshold) found new DIAObjects (``diaObjectId =
diaSourceId``, as Rubin does); every touched DIAObject gets a new version whose summary is
recomputed from its full history including this visit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from algorithms.association import (
    Columns,
    Match,
    match_positions,
    passes_quality,
    position_error_arcsec,
)
from algorithms.association_summary import summarize

# ICRS -> Galactic rotation (Hipparcos definition, as astropy uses).
_ICRS_TO_GAL = np.array(
    [
        [-0.0548755604162154, -0.8734370902348850, -0.4838350155487132],
        [0.4941094278755837, -0.4448296299600112, 0.7469822444972189],
        [-0.8676661490190047, -0.1980763734312015, 0.4559837761750669],
    ]
)
_OBLIQUITY_J2000 = math.radians(84381.406 / 3600.0)  # IAU 2006 mean obliquity


@dataclass(frozen=True)
class AssociationResult:
    sources: Columns  # the input DIASources with diaObjectId and ssObjectId filled in
    objects: Columns  # new versions of every touched DIAObject (full summaries)
    ss_sources: Columns  # one SSSource row per DIASource associated with a moving object
    n_matched: int
    n_new: int
    n_moving: int
    n_unassociated: int  # unmatched sources that failed the quality cuts


def _rotate(ra: np.ndarray, dec: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, d = np.radians(ra), np.radians(dec)
    v = np.stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)])
    x, y, z = matrix @ v
    return np.degrees(np.arctan2(y, x)) % 360.0, np.degrees(np.arcsin(np.clip(z, -1, 1)))


def galactic(ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ICRS (deg) -> Galactic (l, b) in degrees."""
    return _rotate(ra, dec, _ICRS_TO_GAL)


def ecliptic(ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ICRS (deg) -> mean ecliptic of J2000 (lambda, beta) in degrees."""
    c, s = math.cos(_OBLIQUITY_J2000), math.sin(_OBLIQUITY_J2000)
    return _rotate(ra, dec, np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]]))


def ss_source_rows(sources: Columns, idx: np.ndarray, predictions: Columns, m: Match) -> Columns:
    """SSSource rows for the sources ``idx`` matched to ``predictions`` by ``m``."""
    j = m.index[idx]
    ra, dec = sources["ra"][idx].astype(np.float64), sources["dec"][idx].astype(np.float64)
    eph_ra = predictions["ra"][j].astype(np.float64)
    eph_dec = predictions["dec"][j].astype(np.float64)
    lam, beta = ecliptic(ra, dec)
    gl, gb = galactic(ra, dec)
    d_ra = ((ra - eph_ra + 180.0) % 360.0 - 180.0) * np.cos(np.radians(dec)) * 3600.0
    d_dec = (dec - eph_dec) * 3600.0
    rows: Columns = {
        "diaSourceId": sources["diaSourceId"][idx].astype(np.int64),
        "ssObjectId": predictions["ssObjectId"][j].astype(np.int64),
        "eclLambda": lam,
        "eclBeta": beta,
        "galLon": gl,
        "galLat": gb,
        "ephRa": eph_ra,
        "ephDec": eph_dec,
        "ephOffset": m.separation_arcsec[idx],
        "ephOffsetRa": d_ra,
        "ephOffsetDec": d_dec,
        "diaDistanceRank": np.ones(len(idx), dtype=np.int32),
    }
    rate_ra = predictions.get("ephRateRa")
    rate_dec = predictions.get("ephRateDec")
    if rate_ra is not None and rate_dec is not None:
        rr, rd = rate_ra[j].astype(np.float64), rate_dec[j].astype(np.float64)
        speed = np.hypot(rr, rd)
        with np.errstate(invalid="ignore", divide="ignore"):
            ux, uy = rr / speed, rd / speed
        rows["ephRateRa"], rows["ephRateDec"], rows["ephRate"] = rr, rd, speed
        rows["ephOffsetAlongTrack"] = d_ra * ux + d_dec * uy
        rows["ephOffsetCrossTrack"] = -d_ra * uy + d_dec * ux
    for name in ("designation", "ephVmag"):
        if name in predictions:
            rows[name] = np.asarray(predictions[name])[j]
    return rows


def associate(
    sources: Columns,
    objects: Columns,
    history: Columns,
    forced_history: Columns | None,
    processing_mjd: float,
    ss_predictions: Columns | None = None,
    radius_arcsec: float = 1.0,
    ss_radius_arcsec: float = 1.0,
    min_snr: float = 5.0,
    object_pixels: np.ndarray | None = None,
    min_reliability: float | None = None,
) -> AssociationResult:
    """Associate one CCD's DIASources; see the module docstring for the order of passes.

    The same as :func:`match` then :func:`summarize_matched` with the same history.
    """
    matched = match(
        sources, objects, ss_predictions, radius_arcsec, ss_radius_arcsec, min_snr,
        object_pixels, min_reliability,
    )  # fmt: skip
    return summarize_matched(matched, history, forced_history, processing_mjd)


@dataclass(frozen=True)
class Matched:
    """The matching half of :func:`associate`: every source's object, before summaries.

    ``known`` are the preloaded DIAObjects that matched a source: the only ones whose
    history the summaries (and their alerts) need.
    """

    sources: Columns
    ss_sources: Columns
    known: np.ndarray
    n_matched: int
    n_new: int
    n_moving: int
    n_unassociated: int


def match(
    sources: Columns,
    objects: Columns,
    ss_predictions: Columns | None = None,
    radius_arcsec: float = 1.0,
    ss_radius_arcsec: float = 1.0,
    min_snr: float = 5.0,
    object_pixels: np.ndarray | None = None,
    min_reliability: float | None = None,
) -> Matched:
    """Moving objects, DIAObjects and new objects for one CCD's DIASources, without history
    (the arguments are :func:`associate`'s).

    With ``min_reliability`` an unmatched source founds a new DIAObject when its (trained)
    reliability reaches it, the same cut that decides its alert, so every source above the
    alert threshold has an object; without, the S/N and flag cuts of ``passes_quality`` decide.

    ``objects`` are the preloaded latest DIAObjects (diaObjectId, ra, dec, raErr, decErr);
    ``ss_predictions`` the moving objects predicted in the footprint at this visit's epoch
    (ssObjectId, ra, dec, optional raErr/decErr in degrees, designation, ephVmag,
    ephRateRa/ephRateDec in deg/day).
    """
    n = len(sources["ra"])
    src = {k: np.asarray(v).copy() for k, v in sources.items()}
    src_err = position_error_arcsec(src)
    dia_id = np.zeros(n, dtype=np.int64)
    ss_id = np.zeros(n, dtype=np.int64)
    remaining = np.ones(n, dtype=bool)
    ss_rows: Columns = {}
    n_moving = 0
    if ss_predictions is not None and len(ss_predictions["ra"]):
        m = match_positions(
            src["ra"], src["dec"], src_err,
            ss_predictions["ra"], ss_predictions["dec"], position_error_arcsec(ss_predictions),
            ss_radius_arcsec,
        )  # fmt: skip
        hit = np.flatnonzero(m.matched)
        ss_id[hit] = ss_predictions["ssObjectId"][m.index[hit]]
        remaining[hit] = False
        ss_rows = ss_source_rows(src, hit, ss_predictions, m)
        n_moving = len(hit)

    rest = np.flatnonzero(remaining)
    m = match_positions(
        src["ra"][rest], src["dec"][rest], src_err[rest],
        objects["ra"], objects["dec"], position_error_arcsec(objects),
        radius_arcsec, object_pixels,
    )  # fmt: skip
    matched = rest[m.matched]
    dia_id[matched] = np.asarray(objects["diaObjectId"], dtype=np.int64)[m.index[m.matched]]
    unmatched = rest[~m.matched]
    if min_reliability is not None:
        rel = np.asarray(src.get("reliability", np.full(n, np.nan)), dtype=np.float64)
        good = rel[unmatched] >= min_reliability
    else:
        good = passes_quality({k: v[unmatched] for k, v in src.items()}, min_snr=min_snr)
    new = unmatched[good]
    dia_id[new] = src["diaSourceId"][new]

    src["diaObjectId"] = dia_id
    src["ssObjectId"] = ss_id
    return Matched(
        sources=src,
        ss_sources=ss_rows,
        known=np.unique(dia_id[matched]),
        n_matched=len(matched),
        n_new=len(new),
        n_moving=n_moving,
        n_unassociated=len(unmatched) - len(new),
    )


def summarize_matched(
    matched: Matched, history: Columns, forced_history: Columns | None, processing_mjd: float
) -> AssociationResult:
    """New versions of every touched DIAObject from ``history`` (DIASources, and forced ones)
    of at least the ``matched.known`` objects, plus this visit's sources."""
    src = matched.sources
    dia_id = np.asarray(src["diaObjectId"], dtype=np.int64)
    touched = np.unique(dia_id[dia_id != 0])
    combined = _concat(history, src, touched)
    summary = summarize(touched, combined, forced_history)
    summary["diaObjectId"] = touched
    summary["validityStartMjdTai"] = np.full(len(touched), processing_mjd)
    return AssociationResult(
        sources=src,
        objects=summary,
        ss_sources=matched.ss_sources,
        n_matched=matched.n_matched,
        n_new=matched.n_new,
        n_moving=matched.n_moving,
        n_unassociated=matched.n_unassociated,
    )


_SUMMARY_INPUTS = (
    "diaObjectId", "ra", "dec", "raErr", "decErr", "ra_dec_Cov", "midpointMjdTai", "band",
    "psfFlux", "psfFluxErr", "scienceFlux", "scienceFluxErr",
)  # fmt: skip


def _concat(history: Columns, current: Columns, touched: np.ndarray) -> Columns:
    """The columns :func:`summarize` needs, history rows of touched objects + this visit."""
    out: Columns = {}
    hist_ids = np.asarray(history.get("diaObjectId", np.zeros(0, dtype=np.int64)))
    keep = np.isin(hist_ids, touched)
    n = len(current["ra"])
    for name in _SUMMARY_INPUTS:
        cur = np.asarray(current[name]) if name in current else np.full(n, np.nan)
        old = np.asarray(history[name])[keep] if name in history else np.zeros(0, cur.dtype)
        out[name] = np.concatenate([old.astype(cur.dtype, copy=False), cur])
    return out


def alert_selection(sources: Columns, min_reliability: float | None) -> np.ndarray:
    """Which associated DIASources get an alert: those with a diaObject or an ssObject (an
    alert always references its object) whose reliability is at least ``min_reliability``
    (None: no cut; a NaN reliability fails a cut)."""
    n = len(sources["diaSourceId"])
    dia = np.asarray(sources.get("diaObjectId", np.zeros(n)), dtype=np.int64)
    ss = np.asarray(sources.get("ssObjectId", np.zeros(n)), dtype=np.int64)
    keep = (dia != 0) | (ss != 0)
    if min_reliability is not None:
        rel = np.asarray(sources.get("reliability", np.full(n, np.nan)), dtype=np.float64)
        keep &= rel >= min_reliability
    return keep
