"""The nightly Data Quality Report (LSE-61 DMS-REQ-0097) as a JSON-ready dict.

* per band: zeropoint, sky level, seeing, PSF width and astrometric scatter of the processed
  CCDs (median and 5–95 % range), and per visit (medians over its CCDs) versus time;
* detection efficiency versus the true difference magnitude (see ``truth.py``), per band and
  per kind of source, over the pixels of the CCDs that were processed, with the magnitude of
  50 % efficiency (m50) and the flux pull of the matched DIASources;
* completeness per true S/N bin and magnitude bin, purity of all and of the alerted DIASources,
  and DIASource astrometry against the truth (``alert_quality.py``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from base.prompt_records import METRICS, NightRecords
from config.cameras import load_camera
from state.errors import ConfigurationError

from .alert_quality import CcdArea, alert_quality, ccd_noise, scope_truth
from .truth import TruthSources, match

#: record field -> JSON key (the names of the CCD summary in docs/reports.md)
METRIC_KEYS = {
    "zeropoint": "zeropoint",
    "sky_level": "skyLevel",
    "seeing_arcsec": "seeingArcsec",
    "psf_fwhm_px": "psfFwhmPx",
    "astrom_rms_mas": "astromRmsMas",
}
EMPTY_MESSAGE = "No processed CCDs with data-quality metrics were recorded for this night."
BIN_MAG = 0.5


def _stats(values: list[float | None]) -> dict[str, Any]:
    v = np.array([x for x in values if x is not None], np.float64)
    if not len(v):
        return {"n": 0, "median": None, "p05": None, "p95": None}
    p05, med, p95 = np.percentile(v, [5, 50, 95])
    return {"n": len(v), "median": float(med), "p05": float(p05), "p95": float(p95)}


def _metric_tables(night: NightRecords) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    visits = night.visit_map()
    per_band: dict[str, list[Any]] = {}
    per_visit: dict[int, list[Any]] = {}
    for o in night.outcomes:
        if o.status != "processed" or o.visit not in visits:
            continue
        per_band.setdefault(visits[o.visit].band, []).append(o)
        per_visit.setdefault(o.visit, []).append(o)
    bands = {}
    for band, rows in sorted(per_band.items()):
        bands[band] = {
            "nCcds": len(rows),
            "nVisits": len({o.visit for o in rows}),
            **{METRIC_KEYS[m]: _stats([getattr(o, m) for o in rows]) for m in METRICS},
            "nSources": _stats([None if o.n_sources is None else float(o.n_sources) for o in rows]),
        }
    series = []
    for v, rows in sorted(per_visit.items(), key=lambda kv: visits[kv[0]].obs_mjd):
        entry: dict[str, Any] = {
            "visit": v,
            "band": visits[v].band,
            "obsMjd": visits[v].obs_mjd,
            "nCcds": len(rows),
        }
        for m in METRICS:
            entry[METRIC_KEYS[m]] = _stats([getattr(o, m) for o in rows])["median"]
        series.append(entry)
    return bands, series


def _bins(mag: NDArray[np.float64], detected: NDArray[np.bool_]) -> list[dict[str, Any]]:
    finite = np.isfinite(mag)
    if not finite.any():
        return []
    m = mag[finite]
    lo = np.floor(m.min() / BIN_MAG) * BIN_MAG
    k = np.floor((m - lo) / BIN_MAG).astype(np.int64)
    edges = lo + BIN_MAG * np.arange(k.max() + 2)
    d = detected[finite]
    out = []
    for i in range(len(edges) - 1):
        sel = k == i
        n = int(sel.sum())
        if n:
            out.append(
                {
                    "magLo": float(edges[i]),
                    "magHi": float(edges[i + 1]),
                    "nTruth": n,
                    "nDetected": int(d[sel].sum()),
                    "efficiency": float(d[sel].mean()),
                }
            )
    return out


def m50(bins: list[dict[str, Any]]) -> float | None:
    """Where the efficiency last falls through 50 % going fainter (linear between bin centres).

    The last crossing, so that a dip at the bright end (saturation) does not count.
    """
    centres = [(b["magLo"] + b["magHi"]) / 2 for b in bins]
    eff = [b["efficiency"] for b in bins]
    for i in reversed(range(1, len(bins))):
        if eff[i - 1] >= 0.5 > eff[i]:
            f = (eff[i - 1] - 0.5) / (eff[i - 1] - eff[i])
            return float(centres[i - 1] + f * (centres[i] - centres[i - 1]))
    return None


def ccd_areas(night: NightRecords) -> dict[tuple[int, int], CcdArea]:
    """Size, sky, PSF, read and template noise of every processed CCD whose camera is known
    (for ``scope_truth``)."""
    visits = night.visit_map()
    out = {}
    for o in night.outcomes:
        if o.status != "processed" or o.visit not in visits:
            continue
        vr = visits[o.visit]
        try:
            camera = load_camera(vr.camera)
            det = camera.detector(o.detector)
        except ConfigurationError:
            continue
        sky = np.nan if o.sky_level is None else float(o.sky_level)
        fwhm = np.nan if o.psf_fwhm_px is None else float(o.psf_fwhm_px)
        rn2, tvar = ccd_noise(camera, o.detector, vr.band, o.zeropoint)
        out[(o.visit, o.detector)] = CcdArea(det.nx, det.ny, sky, fwhm, rn2, tvar)
    return out


def detection_efficiency(
    night: NightRecords,
    truth: TruthSources,
    dia: Mapping[str, np.ndarray],
    radius_arcsec: float = 1.0,
    reliability_threshold: float | None = None,
) -> dict[str, Any]:
    """Efficiency versus true difference magnitude, over the processed CCDs of ``night``.

    Truth sources count on the pixels of processed CCDs (``alert_quality.scope_truth``); for
    records without outcomes, every truth source of the night's visits counts.
    """
    night_visits = {v.visit for v in night.visits} | {o.visit for o in night.outcomes}
    if night.outcomes:
        t, snr = scope_truth(truth, ccd_areas(night))
    else:
        keep = np.isin(truth.visit, list(night_visits)) if night_visits else np.ones(len(truth))
        t = truth.select(keep.astype(bool) & np.isfinite(truth.diff_mag))
        snr = np.full(len(t), np.nan)
    in_scope = (
        np.isin(dia["visit"], list(night_visits))
        if night_visits
        else np.ones(len(dia["visit"]), bool)
    )
    nearest, claimed = match(t, dia, radius_arcsec)
    detected = nearest >= 0
    result: dict[str, Any] = {
        "available": True,
        "message": None,
        "radiusArcsec": radius_arcsec,
        "nTruth": len(t),
        "nDetected": int(detected.sum()),
        "nDiaSources": int(in_scope.sum()),
        "nUnmatchedDiaSources": int((in_scope & ~claimed).sum()),
        "bins": _bins(t.diff_mag, detected),
        "perBand": {},
        "perKind": {},
    }
    result["m50"] = m50(result["bins"])
    for band in sorted(set(t.band.tolist())):
        sel = t.band == band
        bins = _bins(t.diff_mag[sel], detected[sel])
        result["perBand"][band] = {
            "nTruth": int(sel.sum()),
            "nDetected": int(detected[sel].sum()),
            "m50": m50(bins),
            "bins": bins,
        }
    for kind, n in sorted(Counter(t.kind.tolist()).items()):
        sel = t.kind == kind
        result["perKind"][kind] = {"nTruth": n, "nDetected": int(detected[sel].sum())}
    j = nearest[detected]
    pull = (dia["psfFlux"][j] - t.diff_flux_njy[detected]) / dia["psfFluxErr"][j]
    pull = pull[np.isfinite(pull)]
    every = truth.select(np.isin(truth.visit, list(night_visits))) if night_visits else truth
    scoped_dia = {k: np.asarray(v)[in_scope] for k, v in dia.items()}
    result["alertQuality"] = alert_quality(
        every, t, snr, scoped_dia, reliability_threshold, radius_arcsec
    )
    result["fluxPull"] = {
        "n": len(pull),
        "median": float(np.median(pull)) if len(pull) else None,
        "sigmaMad": float(1.4826 * np.median(np.abs(pull - np.median(pull))))
        if len(pull)
        else None,
    }
    return result


def data_quality_report(
    night: NightRecords,
    truth: TruthSources | None = None,
    diasources: Mapping[str, np.ndarray] | None = None,
    radius_arcsec: float = 1.0,
    reliability_threshold: float | None = None,
) -> dict[str, Any]:
    """Metrics per band and versus time; detection efficiency when truth and DIASources given.

    ``diasources`` are columns as returned by ``truth.as_diasources``.
    """
    bands, series = _metric_tables(night)
    report: dict[str, Any] = {
        "report": "Data Quality Report",
        "requirement": "DMS-REQ-0097",
        "dayObs": night.day_obs,
        "empty": not series,
        "message": EMPTY_MESSAGE if not series else None,
        "perBand": bands,
        "flags": dict(sorted(Counter(f for o in night.outcomes for f in o.flags).items())),
        "visits": series,
    }
    if truth is None or diasources is None:
        missing = " and ".join(
            w for w, x in (("the truth", truth), ("the DIASources", diasources)) if x is None
        )
        report["detectionEfficiency"] = {
            "available": False,
            "message": f"Detection efficiency needs {missing}; none was given.",
        }
    else:
        report["detectionEfficiency"] = detection_efficiency(
            night, truth, diasources, radius_arcsec, reliability_threshold
        )
        aq = report["detectionEfficiency"]["alertQuality"]
        wcs = [o.astrom_rms_mas for o in night.outcomes if o.astrom_rms_mas is not None]
        aq["astrometry"]["wcsFitRmsMasMedian"] = float(np.median(wcs)) if wcs else None
    return report
