"""Simulated nights processed by the product's CCD chain, with every DIASource labelled by truth.

Shared by ``scripts/train_reliability.py`` and ``benchmarks/ccd_quality.py``: a night is
simulated as ``dmcs simulate night`` writes it (the camera's own sky), each raw is rendered in
memory by the same camera simulator and processed by ``base.ccd_processing.CcdProcessing`` (the
adapter the CcdProcessor runs), the DIASources of the night are associated in visit order by
``algorithms.association_run.associate`` (as the Association component does) and each is
labelled real when a true variable, transient or moving object of its visit lies within 1″.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from algorithms.association_run import associate
from base.ccd_inputs import NightDirectoryRepository
from base.ccd_processing import CcdProcessing
from base.heap import keep_freed_memory
from base.reports.truth import TruthSources, load_truth, match
from summit.night_files import open_night
from summit.simulation import plan_night, run_night

MATCH_RADIUS_ARCSEC = 1.0


@dataclass
class ProcessedCcd:
    visit: int
    detector: int
    ok: bool
    reason: str
    diasources: np.ndarray  # DIASOURCE_DTYPE rows
    summary: dict[str, Any]
    shape: tuple[int, int]  # (ny, nx)


@dataclass
class LabelledNight:
    """All DIASources of a night (columns) with their truth labels, and the scoped truth."""

    camera: str
    seed: int
    ccds: list[ProcessedCcd]
    dia: dict[str, np.ndarray]  # DIASource columns, plus "real" (bool)
    truth: TruthSources


def simulate(camera: str, seed: int, visits: int, root: Path) -> Path:
    """The night directory of (camera, seed, visits) under ``root``, simulated if absent."""
    out = root / f"{camera}-s{seed}-v{visits}"
    if not (out / "manifest.json").is_file():
        run_night(plan_night(camera, visits, seed, out), raws=False)
    return out


_ADAPTERS: dict[str, tuple[Any, CcdProcessing]] = {}


def _process_one(night: str, visit_index: int, detector: int) -> ProcessedCcd:
    if night not in _ADAPTERS:
        src = open_night(Path(night))
        _ADAPTERS[night] = (src, CcdProcessing(NightDirectoryRepository(Path(night))))
    src, adapter = _ADAPTERS[night]
    v = src.visits[visit_index]
    info = src.visit_info(v)
    pre = adapter.preload(info, detector)
    hdul, _ = src.simulator().render(v, detector)
    out = adapter.process(hdul, pre)
    det = src.camera.detector(detector)
    return ProcessedCcd(
        v.visit_id, detector, out.ok, out.reason, out.diasources, out.summary, (det.ny, det.nx)
    )


def process_night(night: Path, workers: int = 2) -> list[ProcessedCcd]:
    """Every CCD of every visit of the night, in visit order."""
    src = open_night(night)
    jobs = [(str(night), i, d.id) for i in range(len(src.visits)) for d in src.camera.detectors]
    if workers <= 1:
        return [_process_one(*j) for j in jobs]
    # Each worker keeps its freed planes for the next CCD, as the CCD processor's child does.
    with ProcessPoolExecutor(workers, initializer=keep_freed_memory) as pool:
        return list(pool.map(_process_one, *zip(*jobs, strict=True)))


def _columns(ccds: Iterable[ProcessedCcd], midpoints: dict[int, float]) -> dict[str, np.ndarray]:
    parts = []
    for c in ccds:
        if not c.ok or not len(c.diasources):
            continue
        d = c.diasources
        cols = {n: np.asarray(d[n]) for n in d.dtype.names or ()}
        n = len(d)
        cols["visit"] = np.full(n, c.visit, np.int64)
        cols["detector"] = np.full(n, c.detector, np.int64)
        cols["diaSourceId"] = (c.visit % 100000) * 10**7 + c.detector * 10**4 + np.arange(n)
        cols["midpointMjdTai"] = np.full(n, midpoints[c.visit])
        cols["band"] = np.full(n, str(c.summary.get("band", "")), dtype=object)
        parts.append(cols)
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def associate_night(
    dia: dict[str, np.ndarray], min_reliability: float | None = None
) -> dict[str, np.ndarray]:
    """diaObjectId of every DIASource (0: none), associated CCD by CCD in visit order as the
    Association component does (``min_reliability``: its alert threshold, with a model)."""
    out = np.zeros(len(dia.get("ra", ())), np.int64)
    objects: dict[str, np.ndarray] = {
        "diaObjectId": np.zeros(0, np.int64),
        **{k: np.zeros(0) for k in ("ra", "dec", "raErr", "decErr")},
    }
    history: dict[str, np.ndarray] = {}
    keys = sorted(set(zip(dia["visit"].tolist(), dia["detector"].tolist(), strict=True)))
    for v, d in keys:
        idx = np.flatnonzero((dia["visit"] == v) & (dia["detector"] == d))
        src = {k: a[idx] for k, a in dia.items()}
        res = associate(
            src, objects, history, None, float(src["midpointMjdTai"][0]),
            min_reliability=min_reliability,
        )  # fmt: skip
        out[idx] = res.sources["diaObjectId"]
        new = res.objects
        keep = ~np.isin(objects["diaObjectId"], new["diaObjectId"])
        objects = {
            k: np.concatenate([objects[k][keep], np.asarray(new[k], np.float64)])
            if k != "diaObjectId"
            else np.concatenate([objects[k][keep], new[k]])
            for k in objects
        }
        cur = res.sources
        history = (
            {k: np.concatenate([history[k], cur[k]]) for k in history}
            if history
            else {k: np.asarray(a) for k, a in cur.items()}
        )
    return {"diaObjectId": out, "ssObjectId": np.zeros(len(out), np.int64)}


def label_night(
    camera: str, seed: int, night: Path, workers: int = 2, reuse: bool = False
) -> LabelledNight:
    """Process, associate and label one simulated night.

    ``reuse``: take the processed CCDs saved by an earlier run (``processed.pickle`` in the
    night directory, a scratch file of this tool) instead of processing again; only for
    re-fitting a model on unchanged pipeline code.
    """
    src = open_night(night)
    mid = {v.visit_id: v.mjd_start + v.exptime / 2 / 86400.0 for v in src.visits}
    cache = night / "processed.pickle"
    if reuse and cache.is_file():
        ccds = pickle.loads(cache.read_bytes())
    else:
        ccds = process_night(night, workers)
        cache.write_bytes(pickle.dumps(ccds))
    dia = _columns(ccds, mid)
    truth = load_truth(night / "truth.sqlite", list(mid))
    if dia:
        _, real = match(truth, dia, MATCH_RADIUS_ARCSEC)
        dia["real"] = real
    return LabelledNight(camera, seed, ccds, dia, truth)


def nights(
    specs: Iterable[tuple[str, int, int]], root: Path, workers: int = 2, reuse: bool = False
) -> Iterator[LabelledNight]:
    """(camera, seed, visits) → labelled nights, simulated under ``root`` as needed."""
    for camera, seed, visits in specs:
        yield label_night(camera, seed, simulate(camera, seed, visits, root), workers, reuse)


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))
