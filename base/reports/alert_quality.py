"""Completeness, purity and DIASource astrometry against the simulated truth (issue 14).

* Completeness counts only the truth sources a CCD could have seen: on a processed CCD's
  pixels (not the simulator's 30 px margin, so a source near a CCD boundary counts once), with
  their true difference-image S/N (``truth.true_snr``), per S/N bin and per difference
  magnitude bin.
* Purity is the share of DIASources that lie within ``radius_arcsec`` of a true variable,
  transient or moving object of their visit: for every DIASource, and for the alerted ones
  (those association gave an object, with reliability at or above the alert threshold).
* Astrometry is the rms distance of matched DIASources of measured S/N ≥ 20 from the truth,
  over those whose centroid is not flagged (``ASTROMETRY_EXCLUDING_FLAGS``: a source cut by
  the CCD's edge, a failed centroid), as Rubin's astrometric metrics take clean sources; the
  flagged ones are counted, and the rms with them is reported beside it.
* PSF-flux pulls ``(psfFlux − true difference flux) / psfFluxErr`` of the unflagged DIASources
  matched to a variable or transient (movers are trailed, so a PSF fit is not their flux),
  per true-S/N bin (binning by the measured S/N would select the upward fluctuations):
  median, robust σ (1.4826 MAD) and standard deviation.
* ``bright_star_false``: DIASources matching no truth source that lie within 5″ of a star
  brighter than 18 mag, per such star on a processed CCD per visit.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from config.cameras import Camera
from summit.templates import template_sky_variance

from .truth import AB_NJY_ZERO, BrightStars, TruthSources, match, true_snr, unit_vectors

SNR_EDGES = (0.0, 3.0, 5.0, 7.0, 10.0, 20.0, 50.0, np.inf)
PULL_SNR_EDGES = (5.0, 7.0, 10.0, 20.0, 50.0, 100.0, np.inf)
#: A DIASource with one of these set has no trustworthy PSF flux; it is left out of the pulls.
PULL_EXCLUDING_FLAGS = (
    "pixelFlags_saturatedCenter", "pixelFlags_interpolatedCenter", "pixelFlags_crCenter",
    "isDipole", "psfFlux_flag",
)  # fmt: skip
HEADLINE_SNR = 7.0
ASTROMETRY_SNR = 20.0
#: A DIASource with one of these set has no trustworthy centroid; it is left out of the
#: astrometry (a star centred beyond the last row measured 0.3–0.8″ off on mini 501).
ASTROMETRY_EXCLUDING_FLAGS = ("pixelFlags_edge", "centroid_flag")


@dataclass(frozen=True)
class CcdArea:
    """What the truth needs of one processed CCD: its size and the measured sky and PSF."""

    nx: int
    ny: int
    sky_e: float  # electrons per pixel
    fwhm_px: float
    read_var_e: float = 0.0  # the visit's read-noise variance, e⁻² per pixel
    template_var_e: float = 0.0  # the template's noise variance, e⁻² (visit electrons) per pixel


def ccd_noise(
    camera: Camera, detector: int, band: str, zeropoint: float | None
) -> tuple[float, float]:
    """(read-noise variance, template noise variance) per pixel of a CCD, in the visit's
    electrons, from the camera (its amplifiers' read noise, the template's recipe in
    ``summit.templates``) and the visit's measured zeropoint (the AB magnitude of one
    electron); the template term is 0 when the zeropoint is unknown or the band not the
    camera's."""
    rn2 = float(np.mean([a.read_noise**2 for a in camera.detector(detector).amplifiers]))
    if zeropoint is None or not np.isfinite(zeropoint) or band not in camera.photometry.zeropoint:
        return rn2, 0.0
    njy_per_e = 10.0 ** ((AB_NJY_ZERO - float(zeropoint)) / 2.5)
    return rn2, template_sky_variance(camera, detector, band) / njy_per_e**2


def scope_truth(
    truth: TruthSources, ccds: Mapping[tuple[int, int], CcdArea]
) -> tuple[TruthSources, NDArray[np.float64]]:
    """The truth rows on the pixels of processed CCDs, and their true difference S/N."""
    keys = list(zip(truth.visit.tolist(), truth.detector.tolist(), strict=True))
    nx = np.array([ccds[k].nx if k in ccds else 0 for k in keys], np.float64)
    ny = np.array([ccds[k].ny if k in ccds else 0 for k in keys], np.float64)
    keep = (truth.x >= -0.5) & (truth.x < nx - 0.5) & (truth.y >= -0.5) & (truth.y < ny - 0.5)
    keep &= np.isfinite(truth.diff_mag)
    t = truth.select(keep)
    kept = [k for k, ok in zip(keys, keep.tolist(), strict=True) if ok]
    sky, fwhm, rn2, tvar = (
        np.array([getattr(ccds[k], a) for k in kept], np.float64)
        for a in ("sky_e", "fwhm_px", "read_var_e", "template_var_e")
    )
    return t, true_snr(t, sky, fwhm, rn2, tvar)


def _bin_table(
    value: NDArray[np.float64], found: Mapping[str, NDArray[np.bool_]], edges: NDArray[np.float64]
) -> list[dict[str, Any]]:
    out = []
    for lo, hi in itertools.pairwise(edges):
        sel = (value >= lo) & (value < hi)
        n = int(sel.sum())
        if not n:
            continue
        row: dict[str, Any] = {"lo": float(lo), "hi": float(hi) if np.isfinite(hi) else None}
        row["nTruth"] = n
        for name, hit in found.items():
            row[f"n{name}"] = int(hit[sel].sum())
            row[f"completeness{name}"] = float(hit[sel].mean())
        out.append(row)
    return out


def _share(hit: NDArray[np.bool_]) -> float | None:
    return float(hit.mean()) if len(hit) else None


def alert_quality(
    truth: TruthSources,
    scoped: TruthSources,
    snr: NDArray[np.float64],
    dia: Mapping[str, np.ndarray],
    threshold: float | None,
    radius_arcsec: float = 1.0,
) -> dict[str, Any]:
    """Completeness (before and after the alert cut), purity and astrometry; see the module.

    ``truth`` is every truth source of the night's visits (for purity), ``scoped`` and ``snr``
    come from :func:`scope_truth`. ``dia`` holds ra, dec, visit, psfFlux, psfFluxErr and, for
    the figures after the cut, reliability and diaObjectId/ssObjectId (absent: every DIASource
    counts as alerted). ``threshold`` None: no reliability cut.
    """
    n = len(dia["ra"])
    rel = np.asarray(dia.get("reliability", np.full(n, np.nan)), np.float64)
    has_object = np.ones(n, bool)
    if "diaObjectId" in dia or "ssObjectId" in dia:
        has_object = (np.asarray(dia.get("diaObjectId", np.zeros(n)), np.int64) != 0) | (
            np.asarray(dia.get("ssObjectId", np.zeros(n)), np.int64) != 0
        )
    alerted = has_object & (rel >= threshold if threshold is not None else True)
    _, real = match(truth, dia, radius_arcsec)
    nearest, _ = match(scoped, dia, radius_arcsec)
    detected = nearest >= 0
    kept = detected & alerted[np.maximum(nearest, 0)] if n else np.zeros_like(detected)
    strong = snr >= HEADLINE_SNR
    found = {"Detected": detected, "Alerted": kept}
    with np.errstate(divide="ignore", invalid="ignore"):
        meas_snr = np.abs(np.asarray(dia["psfFlux"], np.float64) / dia["psfFluxErr"])
    j = nearest[detected]
    bright = meas_snr[j] >= ASTROMETRY_SNR
    clean = bright & ~_any_flag(dia, ASTROMETRY_EXCLUDING_FLAGS)[j]
    sep = _separation_mas(scoped.ra[detected], scoped.dec[detected], dia["ra"][j], dia["dec"][j])
    mag_lo = np.floor(np.nanmin(scoped.diff_mag)) if len(scoped) else 0.0
    mag_hi = np.ceil(np.nanmax(scoped.diff_mag)) + 0.5 if len(scoped) else 0.0
    return {
        "radiusArcsec": radius_arcsec,
        "reliabilityThreshold": threshold,
        "nTruthOnCcds": len(scoped),
        "nTruthSnrGe7": int(strong.sum()),
        "completenessSnrGe7": _share(detected[strong]),
        "completenessSnrGe7Alerted": _share(kept[strong]),
        "nDiaSources": n,
        "nAlerted": int(alerted.sum()),
        "purityAllDiaSources": _share(real),
        "purityAlerted": _share(real[alerted]),
        "nWithoutObject": int((~has_object).sum()),
        "nReliableWithoutObject": int(
            (~has_object & (rel >= threshold if threshold is not None else True)).sum()
        ),
        "completenessBySnr": _bin_table(snr, found, np.asarray(SNR_EDGES)),
        "completenessByMag": _bin_table(
            scoped.diff_mag, found, np.arange(mag_lo, mag_hi + 0.5, 0.5)
        ),
        "astrometry": {
            "snrMin": ASTROMETRY_SNR,
            "n": int(clean.sum()),
            "diaSourceRmsMas": _rms(sep[clean]),
            "nFlagged": int((bright & ~clean).sum()),
            "diaSourceRmsMasWithFlagged": _rms(sep[bright]),
        },
        "pullsBySnr": pull_table(
            *flux_pulls(scoped, snr, dia, nearest), np.asarray(PULL_SNR_EDGES)
        ),
    }


def flux_pulls(
    scoped: TruthSources,
    snr: NDArray[np.float64],
    dia: Mapping[str, np.ndarray],
    nearest: NDArray[np.int64],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """True S/N (``snr``, from :func:`scope_truth`) and PSF-flux pull of every unflagged
    DIASource matched to a variable or transient (``nearest``: :func:`match` of ``scoped``).

    The pulls are binned by the truth's S/N, not the measured one: a bin of measured S/N
    selects the sources whose noise scattered them into it (Eddington bias), which shifts the
    pulls' median by up to ~0.5 σ in a bin just above the detection threshold even when every
    flux and error is right."""
    keep = (nearest >= 0) & np.isin(scoped.kind, ("variable", "transient"))
    j = nearest[keep]
    ok = ~_any_flag(dia, PULL_EXCLUDING_FLAGS)[j]
    flux = np.asarray(dia["psfFlux"], np.float64)[j]
    err = np.asarray(dia["psfFluxErr"], np.float64)[j]
    ok &= np.isfinite(flux) & np.isfinite(err) & (err > 0)
    truth = scoped.diff_flux_njy[keep]
    return np.asarray(snr, np.float64)[keep][ok], (flux[ok] - truth[ok]) / err[ok]


def _any_flag(dia: Mapping[str, np.ndarray], flags: tuple[str, ...]) -> NDArray[np.bool_]:
    """For each DIASource, whether any of ``flags`` that ``dia`` has is set."""
    n = len(dia["ra"])
    out = np.zeros(n, bool)
    for f in flags:
        if f in dia:
            out |= np.asarray(dia[f], bool).reshape(n)
    return out


def _rms(sep: NDArray[np.float64]) -> float | None:
    return float(np.sqrt(np.mean(sep**2))) if len(sep) else None


#: Resamples of each bin for the bootstrap range of its robust σ.
BOOTSTRAP_RESAMPLES = 400


def pull_table(
    snr: NDArray[np.float64], pull: NDArray[np.float64], edges: NDArray[np.float64]
) -> list[dict[str, Any]]:
    """Median, robust σ and standard deviation of the pulls per (true) S/N bin, each robust σ
    with its bootstrap 68 % range: from the 20–40 pulls a night's bin holds, a robust σ of
    unit-normal pulls falls outside 0.9–1.1 more often than not."""
    out = []
    rng = np.random.default_rng(0)
    for lo, hi in itertools.pairwise(edges):
        p = pull[(snr >= lo) & (snr < hi)]
        if not len(p):
            continue
        med = float(np.median(p))
        boot = rng.choice(p, (BOOTSTRAP_RESAMPLES, len(p)))
        boot_med = np.median(boot, axis=1, keepdims=True)
        boot_sigma = 1.4826 * np.median(np.abs(boot - boot_med), axis=1)
        out.append(
            {
                "lo": float(lo),
                "hi": float(hi) if np.isfinite(hi) else None,
                "n": len(p),
                "median": med,
                "robustSigma": 1.4826 * float(np.median(np.abs(p - med))),
                "robustSigmaRange68": [float(q) for q in np.percentile(boot_sigma, [16, 84])],
                "std": float(np.std(p)),
            }
        )
    return out


def bright_star_false(
    stars: BrightStars,
    ccds: Mapping[tuple[int, int], CcdArea],
    dia: Mapping[str, np.ndarray],
    real: NDArray[np.bool_],
    radius_arcsec: float = 5.0,
    alerted: NDArray[np.bool_] | None = None,
) -> dict[str, Any]:
    """False DIASources (``~real``) within ``radius_arcsec`` of a bright star of their visit,
    per bright star on a processed CCD per visit; also those without a saturation, suspect
    or edge flag and, given ``alerted``, the alerted ones."""
    keys = list(zip(stars.visit.tolist(), stars.detector.tolist(), strict=True))
    nx = np.array([ccds[k].nx if k in ccds else 0 for k in keys], np.float64)
    ny = np.array([ccds[k].ny if k in ccds else 0 for k in keys], np.float64)
    on = (stars.x >= -0.5) & (stars.x < nx - 0.5) & (stars.y >= -0.5) & (stars.y < ny - 0.5)
    false = np.flatnonzero(~np.asarray(real, bool))
    near = np.zeros(len(false), bool)
    if len(false) and on.any():
        chord = 2.0 * np.sin(np.radians(radius_arcsec / 3600.0) / 2.0)
        visit = np.asarray(dia["visit"])[false]
        for v in np.unique(visit):
            s = on & (stars.visit == v)
            if not s.any():
                continue
            di = np.flatnonzero(visit == v)
            tree = cKDTree(unit_vectors(stars.ra[s], stars.dec[s]))
            pts = unit_vectors(dia["ra"][false[di]], dia["dec"][false[di]])
            near[di] = np.isfinite(tree.query(pts, distance_upper_bound=chord)[0])
    n_star = int(on.sum())
    clean = np.ones(len(false), bool)
    for f in ("pixelFlags_saturated", "pixelFlags_suspect", "pixelFlags_edge"):
        if f in dia:
            clean &= ~np.asarray(dia[f], bool)[false]
    out: dict[str, Any] = {
        "magMax": stars.mag_max,
        "radiusArcsec": radius_arcsec,
        "nStarVisits": n_star,
        "nFalseNear": int(near.sum()),
        "falsePerStarVisit": float(near.sum() / n_star) if n_star else None,
        "nFalseNearUnflagged": int((near & clean).sum()),
    }
    if alerted is not None:
        out["nFalseNearAlerted"] = int((near & np.asarray(alerted, bool)[false]).sum())
    return out


def _separation_mas(
    ra1: NDArray[np.float64], dec1: NDArray[np.float64], ra2: np.ndarray, dec2: np.ndarray
) -> NDArray[np.float64]:
    r1, d1, r2, d2 = (np.radians(np.asarray(a, np.float64)) for a in (ra1, dec1, ra2, dec2))
    h = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0, 1)))) * 3.6e6
