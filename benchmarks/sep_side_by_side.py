"""SEP beside the hand-written background and detection, on the product's own skies; prints JSON.

One CCD of a simulated ``comcam`` night (4k×4k ITL, bright and saturated stars, variables,
transients, movers) and one of a ``mini`` night is processed by the product's chain, recording
every image handed to ``fit_background`` and ``detect_sources`` (``benchmarks/sep_capture.py``).
On exactly those images, for each call:

- background: CPU seconds (best of ``REPEATS``) of fit + full-resolution evaluation, hand-written
  (``method="clipped"``) and SEP (``method="sep"``, the product's default); on the science image
  the residual against the truth (image − model − the simulator's noiseless source electrons,
  median per 64×64 block, in units of the pixel noise), on the difference image the two models'
  difference in units of its noise;
- detection: CPU seconds of ``detect_sources`` against ``sep.extract`` with the same variance
  plane, threshold, minimum area and excluded pixels, its matched filter either the same
  Gaussian of the PSF's width (``sep_psf``, timed once: it is >10× slower) or SEP's default
  3×3 kernel (``sep_3x3``, the setting of the figures usually quoted for SEP), with SEP's
  default deblending; the difference image's negative polarity by a second call on −image, its
  variance multiplied by the square of the noise scale the hand-written path measured (that
  measurement, a full matched filter, is not in SEP's time); completeness at true S/N ≥ 7,
  detections with no truth source within 3 px, and the share of one's peaks within 2 px of a
  peak of the other.

    PYTHONPATH=. python benchmarks/sep_side_by_side.py [--cameras comcam mini] [--seed 301]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import sep
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from algorithms import mask as mk
from algorithms.background import fit_background
from algorithms.detection import detect_sources
from algorithms.psf import gaussian_kernel
from base.reports.truth import true_snr
from benchmarks.cpu_timing import best_cpu
from benchmarks.sep_capture import CapturedCcd, capture

REPEATS = 3
DETECTORS = {"comcam": 4, "mini": 0}
MATCH_PX = 2.0
FALSE_PX = 3.0


def _block_median(r: np.ndarray, b: int = 64) -> np.ndarray:
    ny, nx = (r.shape[0] // b) * b, (r.shape[1] // b) * b
    blocks = r[:ny, :nx].reshape(ny // b, b, nx // b, b).transpose(0, 2, 1, 3)
    return np.nanmedian(blocks.reshape(ny // b, nx // b, -1), axis=2)


def background_figures(c: CapturedCcd) -> list[dict[str, Any]]:
    out = []
    for k, call in enumerate(c.backgrounds):
        img, msk, cell = call.args
        diff = k == len(c.backgrounds) - 1
        t_hand, hand = best_cpu(
            lambda img=img, msk=msk, cell=cell: (
                fit_background(img, msk, cell, method="clipped").evaluate().copy()
            ),
            REPEATS,
        )
        t_sep, sepm = best_cpu(
            lambda img=img, msk=msk, cell=cell: fit_background(img, msk, cell).evaluate(),
            REPEATS,
        )
        good = (msk & mk.UNUSABLE) == 0
        sigma = float(1.4826 * np.median(np.abs(img[good][::7] - np.median(img[good][::7]))))
        row: dict[str, Any] = {
            "call": "difference" if diff else f"science_{k + 1}",
            "cpu_s": {"hand": round(t_hand, 3), "sep": round(t_sep, 3)},
            "speedup": round(t_hand / t_sep, 2),
            "pixelSigma": round(sigma, 2),
            "modelDifferenceRmsSigma": round(
                float(np.sqrt(np.mean((hand - sepm) ** 2)) / sigma), 4
            ),
            "modelDifferenceMaxSigma": round(float(np.abs(hand - sepm).max()) / sigma, 4),
        }
        if not diff and c.sources_e is not None:
            for name, model in (("hand", hand), ("sep", sepm)):
                r = img - model - c.sources_e
                r[~good] = np.nan
                blk = _block_median(r) / sigma
                row[f"truthResidual_{name}"] = {
                    "meanSigma": round(float(np.nanmean(blk)), 4),
                    "rmsSigma": round(float(np.sqrt(np.nanmean(blk**2))), 4),
                    "maxAbsSigma": round(float(np.nanmax(np.abs(blk))), 4),
                }
        out.append(row)
    return out


def sep_detect(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    psf_sigma: float,
    threshold: float = 5.0,
    negative: bool = False,
    min_pixels: int = 3,
    exclude_bits: int = mk.NO_DATA,
    noise_scale: float = 1.0,
    psf_kernel: bool = True,
    **_: Any,
) -> np.ndarray:
    """(x, y) of SEP's matched-filter peaks, both polarities when ``negative``: with a
    Gaussian of the PSF's width as the filter (``psf_kernel``), else SEP's default 3×3."""
    excl = np.ascontiguousarray((mask & exclude_bits) != 0)
    var = np.ascontiguousarray(variance * np.float32(noise_scale**2), dtype=np.float32)
    kw: dict[str, Any] = {}
    if psf_kernel:
        size = int(2 * np.ceil(3 * psf_sigma) + 1)
        kw["filter_kernel"] = gaussian_kernel(psf_sigma, size).astype(np.float32)
    pts = []
    for sign in (1.0, -1.0) if negative else (1.0,):
        data = np.ascontiguousarray(sign * image, dtype=np.float32)
        obj = sep.extract(
            data, threshold, var=var, mask=excl, minarea=min_pixels, filter_type="matched",
            clean=False, **kw,
        )  # fmt: skip
        pts.append(np.column_stack([obj["xcpeak"], obj["ycpeak"]]).astype(float))
    return np.concatenate(pts)


def _found(truth_xy: np.ndarray, det_xy: np.ndarray, radius: float) -> np.ndarray:
    if not len(truth_xy):
        return np.zeros(0, bool)
    if not len(det_xy):
        return np.zeros(len(truth_xy), bool)
    d, _ = cKDTree(det_xy).query(truth_xy, distance_upper_bound=radius)
    return np.isfinite(d)


def detection_figures(c: CapturedCcd) -> list[dict[str, Any]]:
    assert c.outputs is not None and c.all_truth is not None and c.diff_truth is not None
    s = c.outputs.summary
    sky, fwhm = float(s["sky_level_electrons"]), float(s["psf_fwhm_pixels"])
    out = []
    for k, call in enumerate(c.detections):
        img, var, msk, psf_sigma, thr = call.args
        diff = k == len(c.detections) - 1

        def hand(img=img, var=var, msk=msk, psf_sigma=psf_sigma, thr=thr, kw=call.kwargs):
            return detect_sources(img, var, msk.copy(), psf_sigma, thr, **kw).peaks

        scale = detect_sources(img, var, msk.copy(), psf_sigma, thr, **call.kwargs).noise_scale

        t_hand, pk = best_cpu(hand, REPEATS)
        hxy = np.column_stack([pk["x"], pk["y"]]).astype(float)
        if diff:
            t = c.diff_truth
            txy = np.column_stack([t.x, t.y])
            snr = true_snr(t, np.full(len(t), sky), np.full(len(t), fwhm))
        else:
            x, y, fe = c.all_truth
            txy = np.column_stack([x, y])
            snr = fe / np.sqrt(4.0 * np.pi * (fwhm / 2.3548) ** 2 * 1.67 * sky + fe)
        inside = (txy[:, 0] >= 0) & (txy[:, 0] < img.shape[1])
        inside &= (txy[:, 1] >= 0) & (txy[:, 1] < img.shape[0])
        bright = inside & (snr >= 7)
        row: dict[str, Any] = {
            "call": "difference" if diff else "science",
            "nTruthSnrGe7": int(bright.sum()),
            "noiseScale": round(float(scale), 3),
            "cpu_s": {"hand": round(t_hand, 3)},
        }
        found = {"hand": hxy}
        for name, psf_kernel in (("sep_psf", True), ("sep_3x3", False)):

            def sepx(img=img, var=var, msk=msk, sg=psf_sigma, thr=thr, kw=call.kwargs,
                     s=scale, pk=psf_kernel):  # fmt: skip
                return sep_detect(img, var, msk, sg, thr, noise_scale=s, psf_kernel=pk, **kw)

            # The PSF-sized filter is >10× slower than the hand-written path: timed once.
            t_sep, found[name] = best_cpu(sepx, REPEATS if not psf_kernel else 1)
            row["cpu_s"][name] = round(t_sep, 3)
            row[f"speedup_{name}"] = round(t_hand / t_sep, 2)
        for name, xy in found.items():
            row[name] = {
                "nDetections": len(xy),
                "completenessSnrGe7": round(float(_found(txy[bright], xy, MATCH_PX).mean()), 4)
                if bright.any()
                else None,
                "nWithoutTruthWithin3px": int((~_found(xy, txy, FALSE_PX)).sum()),
            }
            if name != "hand":
                row[name]["handPeaksMatched"] = round(float(_found(hxy, xy, MATCH_PX).mean()), 4)
                row[name]["peaksMatchedByHand"] = round(float(_found(xy, hxy, MATCH_PX).mean()), 4)
        out.append(row)
    return out


def _totals(rows: list[dict[str, Any]]) -> dict[str, float]:
    """CPU seconds of each implementation over the calls, and hand / each other one."""
    tot = {k: round(sum(r["cpu_s"][k] for r in rows), 3) for k in rows[0]["cpu_s"]}
    return tot | {f"speedup_{k}": round(tot["hand"] / v, 2) for k, v in tot.items() if k != "hand"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cameras", nargs="+", default=["comcam", "mini"])
    ap.add_argument("--seed", type=int, default=301)
    ap.add_argument("--work", type=Path, default=Path("/tmp/dmcs-sep-side-by-side"))
    args = ap.parse_args()
    sep.set_extract_pixstack(1_000_000)
    sep.set_sub_object_limit(4096)
    out: dict[str, Any] = {"benchmark": "sep_side_by_side", "sep": sep.__version__, "ccds": {}}
    for camera in args.cameras:
        c = capture(camera, args.seed, args.work, DETECTORS.get(camera, 0))
        assert c.outputs is not None
        bkg, det = background_figures(c), detection_figures(c)
        out["ccds"][f"{camera}-s{args.seed}-v{c.visit}-d{c.detector}"] = {
            "shape": list(c.backgrounds[0].args[0].shape),
            "ok": c.outputs.ok,
            "nDiaSources": len(c.outputs.diasources),
            "background": bkg,
            "backgroundTotal": _totals(bkg),
            "detection": det,
            "detectionTotal": _totals(det),
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
