"""The inputs the CCD chain hands to background estimation and detection, on a product sky.

A night is simulated as ``dmcs simulate night`` writes it (``scripts.night_truth.simulate``), one
CCD of one visit is rendered by the camera simulator and processed by the adapter the
CcdProcessor runs (``base.ccd_processing.CcdProcessing``); every call of ``fit_background`` and
``detect_sources`` made by ``algorithms.pipeline`` is recorded (copies of its arguments, taken
before the call changes them) so ``benchmarks/sep_side_by_side.py`` can run both
implementations on exactly the images the product sees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import algorithms.pipeline as pipeline
from base.ccd_inputs import NightDirectoryRepository
from base.ccd_processing import CcdOutputs, CcdProcessing
from base.reports.truth import TruthSources, load_truth
from scripts.night_truth import simulate
from summit.night_files import open_night


@dataclass
class Call:
    """One recorded call: positional and keyword arguments (arrays copied)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass
class CapturedCcd:
    camera: str
    seed: int
    visit: int
    detector: int
    backgrounds: list[Call] = field(default_factory=list)
    detections: list[Call] = field(default_factory=list)
    #: Expected source electrons per pixel (the truth image without sky or noise).
    sources_e: np.ndarray | None = None
    #: Truth of the non-static sources of this (visit, detector), for the difference image.
    diff_truth: TruthSources | None = None
    #: (x, y, electrons) of every rendered source, static ones included.
    all_truth: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    outputs: CcdOutputs | None = None


def _copy(a: Any) -> Any:
    return a.copy() if isinstance(a, np.ndarray) else a


@contextmanager
def _recording(name: str, into: list[Call]) -> Iterator[None]:
    real: Callable[..., Any] = getattr(pipeline, name)

    def record(*args: Any, **kwargs: Any) -> Any:
        into.append(Call(tuple(_copy(a) for a in args), {k: _copy(v) for k, v in kwargs.items()}))
        return real(*args, **kwargs)

    setattr(pipeline, name, record)
    try:
        yield
    finally:
        setattr(pipeline, name, real)


def capture(camera: str, seed: int, work: Path, detector: int, visit_index: int = 1) -> CapturedCcd:
    """Process one CCD of a simulated night, recording the background and detection calls.

    Visit index 1 is the second of the night's field pair (both have a template).
    """
    night = simulate(camera, seed, 2, work)
    src = open_night(night)
    v = src.visits[visit_index]
    adapter = CcdProcessing(NightDirectoryRepository(night), make_cutouts=False)
    pre = adapter.preload(src.visit_info(v), detector)
    hdul, truth = src.simulator().render(v, detector)
    out = CapturedCcd(camera, seed, v.visit_id, detector)
    with (
        _recording("fit_background", out.backgrounds),
        _recording("detect_sources", out.detections),
    ):
        out.outputs = adapter.process(hdul, pre)
    out.sources_e = src.simulator().electrons(v, detector, truth)
    t = load_truth(night / "truth.sqlite", [v.visit_id])
    out.diff_truth = t.select(t.detector == detector)
    out.all_truth = (np.asarray(truth.x), np.asarray(truth.y), np.asarray(truth.flux_e))
    return out
