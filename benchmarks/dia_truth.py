"""Difference-imaging quality on a simulated night's own skies, against its truth; prints JSON.

Every (visit, detector) of a ``dmcs simulate night --raws`` directory is processed through
``CcdProcessing`` (the path the product's CcdProcessor runs) and its DIASources are matched to
truth.sqlite:

* ``false_per_bright_star_visit``: DIASources matching no variable, transient or mover within
  1″ that lie within 5″ of a star brighter than ``--bright`` mag, per such star per visit;
* ``completeness_snr_ge_7``: share of true variables/transients on the CCD with true
  difference S/N ≥ 7 that a DIASource finds within 1″ (see ``_true_snr``);
* PSF-flux pulls ``(psfFlux − true difference flux) / psfFluxErr`` of matched, unflagged
  variables and transients, per measured-S/N bin;
* per-CCD CPU seconds (median), for comparison with ``benchmarks/ccd.py``.

Usage: ``python benchmarks/dia_truth.py NIGHT_DIR [--bright 18]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from algorithms.synthetic import moffat_kernel
from base.ccd_inputs import NightDirectoryRepository
from base.ccd_processing import CcdProcessing
from base.reports.truth import AB_NJY_ZERO
from summit.schedule import read_schedule

SNR_BINS = (5.0, 10.0, 20.0, 50.0, 100.0, 1e9)
ARCSEC = 1.0 / 3600.0


def _truth(db: sqlite3.Connection, visit: int, det: int) -> dict[str, np.ndarray]:
    rows = db.execute(
        "SELECT s.kind, s.ra, s.dec, s.x, s.y, s.mag, s.flux_njy, o.r, o.g, o.i, o.u, o.z, o.y,"
        " e.band FROM sources s JOIN exposures e ON e.visit = s.visit AND e.detector = s.detector"
        " LEFT JOIN objects o ON o.object_id = s.object_id WHERE s.visit = ? AND s.detector = ?",
        (visit, det),
    ).fetchall()
    band = rows[0][13] if rows else "r"
    col = {"r": 7, "g": 8, "i": 9, "u": 10, "z": 11, "y": 12}[band]
    kind = np.array([r[0] for r in rows], dtype=str)
    mean = np.array([np.nan if r[col] is None else r[col] for r in rows], float)
    flux = np.array([r[6] for r in rows], float)
    tmpl = np.where(kind == "variable", 10.0 ** ((AB_NJY_ZERO - mean) / 2.5), 0.0)
    return {
        "kind": kind,
        "ra": np.array([r[1] for r in rows], float),
        "dec": np.array([r[2] for r in rows], float),
        "x": np.array([r[3] for r in rows], float),
        "y": np.array([r[4] for r in rows], float),
        "mag": np.array([r[5] for r in rows], float),
        "diff": flux - np.nan_to_num(tmpl),
        "flux": flux,
    }


def _true_snr(summary: dict[str, Any], pre: Any, t: dict[str, np.ndarray]) -> np.ndarray:
    """|true difference flux| / its PSF-flux noise: sky of science and template, and the
    object's own shot noise, for the simulator's Moffat (beta 3) at the measured FWHM. It
    depends on neither the DIASources found nor the pipeline's variance model."""
    cal = summary.get("calibration_njy_per_electron")
    sky, fwhm = summary.get("sky_level_electrons"), summary.get("psf_fwhm_pixels")
    if not cal or sky is None or not fwhm or pre.template is None:
        return np.full(len(t["diff"]), np.nan)
    k = moffat_kernel(float(fwhm), 3.0, 61)
    neff = 1.0 / float((k**2).sum())
    tvar = float(np.median(pre.template.variance)) * (pre.template.calibration / cal) ** 2
    flux_e = np.abs(t["flux"]) / cal
    noise = cal * np.sqrt((sky + tvar) * neff + 4.0 / 3.0 * flux_e)
    return np.abs(t["diff"]) / noise


def _xyz(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    r, d = np.radians(ra), np.radians(dec)
    return np.column_stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)])


def _chord(arcsec: float) -> float:
    return 2.0 * np.sin(np.radians(arcsec * ARCSEC) / 2.0)


def measure(night: Path, bright: float = 18.0, edge: int = 4) -> dict[str, Any]:
    repo = NightDirectoryRepository(night)
    adapter = CcdProcessing(repo, make_cutouts=False)
    db = sqlite3.connect(night / "truth.sqlite")
    n_star_visits = n_false_near = n_false = n_dia = 0
    det_strong = n_strong = 0
    missed: list[dict[str, float]] = []
    pulls: list[tuple[float, float]] = []
    cpu: list[float] = []
    n_ccd = 0
    detectors = [int(d.name[3:]) for d in sorted((night / "calibs").glob("det*"))]
    for v in read_schedule(night / "schedule.sqlite"):
        info = {"visit": v.visit_id, "camera": "mini", "band": v.band, "ra": v.ra, "dec": v.dec,
                "rotSkyPos": v.rot_sky_pos, "fieldId": v.field_id, "startMjd": v.mjd_start,
                "exposureTime": v.exptime, "detectors": detectors}  # fmt: skip
        info["camera"] = json.loads((night / "manifest.json").read_text()).get("camera", "mini")
        for det in detectors:
            raw = repo.get_raw(v.visit_id, det)
            if raw is None:
                continue
            pre = adapter.preload(info, det)
            out = adapter.process(raw, pre)
            n_ccd += 1
            if out.cpu_timings:
                cpu.append(out.cpu_timings["total"])
            d = out.diasources
            t = _truth(db, v.visit_id, det)
            n_dia += len(d)
            geo = pre.camera.detector(det)
            nx, ny = geo.nx, geo.ny
            var = np.isin(t["kind"], ("variable", "transient", "moving"))
            on = (t["x"] >= edge) & (t["y"] >= edge) & (t["x"] < nx - edge) & (t["y"] < ny - edge)
            stars = np.isin(t["kind"], ("star", "variable")) & (t["mag"] < bright) & on
            n_star_visits += int(stars.sum())
            dxyz = _xyz(d["ra"], d["dec"]) if len(d) else np.zeros((0, 3))
            claimed = np.zeros(len(d), bool)
            if len(d) and var.any():
                dist, _ = cKDTree(_xyz(t["ra"][var], t["dec"][var])).query(
                    dxyz, distance_upper_bound=_chord(1.0)
                )
                claimed = np.isfinite(dist)
            n_false += int((~claimed).sum())
            if len(d) and stars.any():
                dist, _ = cKDTree(_xyz(t["ra"][stars], t["dec"][stars])).query(
                    dxyz, distance_upper_bound=_chord(5.0)
                )
                n_false_near += int((~claimed & np.isfinite(dist)).sum())
            # completeness and pulls for variables and transients (movers are trailed)
            cand = np.isin(t["kind"], ("variable", "transient")) & on
            if not len(d) or not cand.any():
                continue
            true_snr = _true_snr(out.summary, pre, t)
            dist, j = cKDTree(dxyz).query(_xyz(t["ra"], t["dec"]), distance_upper_bound=_chord(1.0))
            hit = np.isfinite(dist)
            strong = cand & (true_snr >= 7)
            n_strong += int(strong.sum())
            det_strong += int((strong & hit).sum())
            for k in np.flatnonzero(strong & ~hit):
                missed.append({"visit": v.visit_id, "det": det, "x": round(float(t["x"][k]), 1),
                               "y": round(float(t["y"][k]), 1), "snr": round(float(true_snr[k]), 1),
                               "kind": str(t["kind"][k])})  # fmt: skip
            flags = ("pixelFlags_saturatedCenter", "pixelFlags_interpolatedCenter",
                     "pixelFlags_crCenter", "isDipole", "psfFlux_flag")  # fmt: skip
            for k in np.flatnonzero(cand & hit):
                r = d[j[k]]
                if any(bool(r[f]) for f in flags):
                    continue
                pulls.append((float(abs(r["psfFlux"] / r["psfFluxErr"])),
                              float((r["psfFlux"] - t["diff"][k]) / r["psfFluxErr"])))  # fmt: skip
    p = np.array(pulls).reshape(-1, 2)
    bins = []
    for lo, hi in itertools.pairwise(SNR_BINS):
        s = p[(p[:, 0] >= lo) & (p[:, 0] < hi), 1]
        mad = 1.4826 * float(np.median(np.abs(s - np.median(s)))) if s.size else np.nan
        bins.append({"snr": [lo, hi if hi < 1e8 else None], "n": int(s.size),
                     "median": round(float(np.median(s)), 3) if s.size else None,
                     "std": round(float(np.std(s)), 3) if s.size else None,
                     "robust_sigma": round(mad, 3) if s.size else None})  # fmt: skip
    return {
        "night": str(night),
        "n_ccds": n_ccd,
        "n_diasources": n_dia,
        "n_unmatched": n_false,
        "bright_mag": bright,
        "n_bright_star_visits": n_star_visits,
        "false_near_bright": n_false_near,
        "false_per_bright_star_visit": round(n_false_near / max(n_star_visits, 1), 3),
        "n_true_snr_ge_7": n_strong,
        "completeness_snr_ge_7": round(det_strong / max(n_strong, 1), 4),
        "missed": missed[:20],
        "pulls_by_snr": bins,
        "cpu_per_ccd_s_median": round(float(np.median(cpu)), 3) if cpu else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("night", type=Path)
    ap.add_argument("--bright", type=float, default=18.0)
    a = ap.parse_args()
    print(json.dumps(measure(a.night, a.bright), indent=2))


if __name__ == "__main__":
    main()
