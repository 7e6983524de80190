"""Write the nightly reports: Markdown (+ PNGs beside it), self-contained HTML, and JSON."""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from base.prompt_records import NightRecords
from state.errors import InvalidInputError, StorageError

from . import plots
from .human import performance_blocks, quality_blocks
from .performance import performance_report
from .quality import data_quality_report
from .render import Block, Image, to_html, to_markdown
from .truth import TruthSources, as_diasources, load_truth


@dataclass(frozen=True)
class ReportPaths:
    performance_md: Path
    performance_html: Path
    performance_json: Path
    quality_md: Path
    quality_html: Path
    quality_json: Path
    images: tuple[Path, ...]

    def items(self) -> list[tuple[str, Path]]:
        """(name, path) of the six documents, then ``image<k>`` for the PNGs."""
        named = [(k, getattr(self, k)) for k in self.__dataclass_fields__ if k != "images"]
        return named + [(f"image{k}", p) for k, p in enumerate(self.images)]

    def all(self) -> tuple[Path, ...]:
        return (
            self.performance_md,
            self.performance_html,
            self.performance_json,
            self.quality_md,
            self.quality_html,
            self.quality_json,
            *self.images,
        )


def json_ready(value: Any) -> Any:
    """Plain JSON values: NaN/inf -> None, numpy scalars/arrays -> Python, tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write(path: Path, data: str | bytes) -> None:
    try:
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data, encoding="utf-8")
    except OSError as e:
        raise StorageError(f"cannot write the report file {path}: {e}") from e


def _emit(out_dir: Path, stem: str, report: dict[str, Any], blocks: list[Block]) -> list[Path]:
    paths = []
    for b in blocks:
        if isinstance(b, Image):
            _write(out_dir / b.file_name, b.png)
            paths.append(out_dir / b.file_name)
    _write(out_dir / f"{stem}.md", to_markdown(blocks))
    title = blocks[0].text if blocks and hasattr(blocks[0], "text") else stem
    _write(out_dir / f"{stem}.html", to_html(blocks, title))
    text = json.dumps(json_ready(report), indent=1, allow_nan=False)
    _write(out_dir / f"{stem}.json", text + "\n")
    return paths


def _night_visits(night: NightRecords) -> list[int]:
    return sorted({v.visit for v in night.visits} | {int(v) for v in night.ccd_times().visit})


def write_night_reports(
    night: NightRecords,
    out_dir: Path | str,
    truth: Path | str | TruthSources | None = None,
    diasources: Any = None,
    budget_s: float = 60.0,
    generated: str | None = None,
    *,
    truth_db: Path | str | None = None,
    reliability_threshold: float | None = None,
    node_losses: list[dict[str, Any]] | None = None,
) -> ReportPaths:
    """Build the Performance and Data Quality reports of ``night`` and write them to ``out_dir``.

    ``truth`` is the simulated night's truth.sqlite (or the truth already loaded with
    ``load_truth``; ``truth_db`` is the same by path);
    ``diasources`` a structured array, mapping of columns or list of dicts with Rubin DiaSource
    column names. Both are needed for the detection efficiency; without them the Data Quality
    Report says so. ``reliability_threshold`` is the alert cut the purity and completeness
    of the alerted DIASources are counted at (None: no cut). ``node_losses``: the Ray nodes
    lost during the night (``dmcs replay --kill-node-at``), shown in the Performance Report.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create the report folder {out_dir}: {e}") from e
    generated = generated or dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if truth is not None and truth_db is not None:
        raise InvalidInputError("give the truth once: truth or truth_db, not both")
    source = truth if truth is not None else truth_db
    if source is not None and not isinstance(source, TruthSources):
        source = load_truth(source, _night_visits(night))
    dia = as_diasources(diasources) if diasources is not None else None

    perf = performance_report(night, budget_s)
    perf["generatedUtc"] = generated
    perf["nodeLosses"] = [
        {**loss, "utc": dt.datetime.fromtimestamp(float(loss["at"]), dt.UTC).strftime("%H:%M:%S")}
        for loss in node_losses or []
    ]
    figures = {
        name: png
        for name, png in (
            ("pipelines", plots.pipelines_figure(perf)),
            ("latency", plots.latency_figure(night, perf)),
            ("stages", plots.stages_figure(perf)),
        )
        if png is not None
    }
    images = _emit(out_dir, "performance", perf, performance_blocks(perf, figures))

    dq = data_quality_report(night, source, dia, reliability_threshold=reliability_threshold)
    dq["generatedUtc"] = generated
    figures = {
        name: png
        for name, png in (
            ("metrics", plots.metrics_figure(night)),
            ("efficiency", plots.efficiency_figure(dq)),
        )
        if png is not None
    }
    images += _emit(out_dir, "quality", dq, quality_blocks(dq, figures))
    return ReportPaths(
        performance_md=out_dir / "performance.md",
        performance_html=out_dir / "performance.html",
        performance_json=out_dir / "performance.json",
        quality_md=out_dir / "quality.md",
        quality_html=out_dir / "quality.html",
        quality_json=out_dir / "quality.json",
        images=tuple(images),
    )
