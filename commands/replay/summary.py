"""The end of a replay: counts, latency and the nightly reports, from what was recorded."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from base.prompt.settings import AssociationSettings, CcdProcessorSettings
from base.prompt_records import NightRecords, PromptRecords, latency_summary
from base.reliability import alert_threshold, load_reliability_model
from base.reports.documents import write_night_reports
from base.reports.truth import load_truth
from commands.replay.night_system import PROCESSOR_CLASS
from commands.replay.runner import ReplayOutcome
from config.system import SystemConfig

_DIA_COLUMNS = ("visit", "detector", "ra", "dec", "psfFlux", "psfFluxErr", "midpointMjdTai", "band",
                "reliability", "diaObjectId", "ssObjectId")  # fmt: skip
ASSOCIATION_CLASS = "base.prompt.association:Association"


def _schema(config: SystemConfig, cls: str, key: str, default: str) -> str:
    for spec in config.components:
        if spec.cls == cls:
            return str(spec.settings.get(key, default))
    return default


async def fetch_records(
    pool: asyncpg.Pool, config: SystemConfig, visits: list[int]
) -> NightRecords:
    """Everything recorded about ``visits`` (stages, outcomes, alerts) by the prompt path."""
    schema = _schema(
        config, PROCESSOR_CLASS, "records_schema", CcdProcessorSettings().records_schema
    )
    records = await PromptRecords.connect(pool, schema)
    return await records.fetch_night(visits=visits)


async def _diasources(
    pool: asyncpg.Pool, config: SystemConfig, visits: list[int]
) -> dict[str, Any]:
    schema = _schema(config, ASSOCIATION_CLASS, "apdb_schema", AssociationSettings().apdb_schema)
    cols = ", ".join(f'"{c}"' for c in _DIA_COLUMNS)
    rows = await pool.fetch(
        f'SELECT {cols} FROM "{schema}"."DiaSource" WHERE visit = ANY($1::bigint[])', visits
    )
    return {c: np.array([r[c] for r in rows]) for c in _DIA_COLUMNS}


def _quantile(values: list[float], q: float) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.quantile(finite, q)) if finite else None


def night_summary(records: NightRecords, outcome: ReplayOutcome) -> dict[str, Any]:
    p = outcome.progress
    latency = latency_summary(records)
    ccd_latency = list(p.latencies.values())
    return {
        "complete": outcome.complete,
        "wallSeconds": round(outcome.wall_seconds, 1),
        "visits": len(outcome.visits),
        "ccdsExpected": len(p.expected),
        "ccdsIngested": len(p.ingested),
        "ccdsProcessed": len(p.processed),
        "ccdsFailed": len(p.failed),
        "failures": {f"{v}/{d}": why for (v, d), why in sorted(p.failed.items())},
        "alerts": p.alerts,
        "duplicatePublications": p.duplicate_publications,
        "recoveries": p.recoveries,
        "latencySeconds": {
            "p50": _quantile(ccd_latency, 0.5),
            "p95": _quantile(ccd_latency, 0.95),
            "max": _quantile(ccd_latency, 1.0),
        },
        "visitShareWithin60s": latency.visit_share_within_budget,
        "latencySummary": latency.to_dict(),
        "drive": outcome.drive.as_dict(),
    }


async def write_reports(
    pool: asyncpg.Pool,
    config: SystemConfig,
    records: NightRecords,
    outcome: ReplayOutcome,
    night: Path,
    out: Path,
) -> dict[str, str]:
    truth = load_truth(night / "truth.sqlite", outcome.visits)
    dia = await _diasources(pool, config, outcome.visits)
    paths = write_night_reports(
        records, out / "reports", truth=truth, diasources=dia,
        reliability_threshold=_alert_threshold(config),
    )  # fmt: skip
    return {k: str(v) for k, v in paths.items()}


def _alert_threshold(config: SystemConfig) -> float:
    """The Association's alert threshold in this system (its setting, or the model's)."""
    for spec in config.components:
        if spec.cls == ASSOCIATION_CLASS:
            settings = AssociationSettings.model_validate(spec.settings)
            model = load_reliability_model(settings.reliability_model)
            return alert_threshold(model, settings.alert_reliability_threshold)
    return alert_threshold(load_reliability_model(), None)


def alert_headline(reports: dict[str, str]) -> dict[str, Any] | None:
    """Purity and completeness of the night, from its Data Quality Report (None: no truth)."""
    try:
        dq = json.loads(Path(reports["quality_json"]).read_text())
        aq = dq["detectionEfficiency"]["alertQuality"]
    except (KeyError, OSError, ValueError):
        return None
    keys = ("purityAlerted", "purityAllDiaSources", "completenessSnrGe7Alerted",
            "completenessSnrGe7", "reliabilityThreshold")  # fmt: skip
    return {k: aq.get(k) for k in keys}
