"""The end of a replay: counts, latency and the nightly reports, from what was recorded."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from base.prompt.overload import OVERLOAD
from base.prompt.settings import AssociationSettings, CcdProcessorSettings
from base.prompt_records import NightRecords, PromptRecords, latency_summary, worker_cpu_per_ccd
from base.reliability import alert_threshold, load_reliability_model
from base.reports.documents import write_night_reports
from base.reports.truth import load_truth
from commands.replay.night_system import PROCESSOR_CLASS
from commands.replay.record import NightRecord
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


def failure_summary(failure: str) -> dict[str, Any]:
    """The summary of a replay that failed before it had a night to count."""
    return {
        "complete": False,
        "failure": failure,
        "wallSeconds": None,
        "visits": 0,
        "ccdsExpected": 0,
        "ccdsIngested": 0,
        "ccdsProcessed": 0,
        "ccdsFailed": 0,
        "failures": {},
        "alerts": 0,
        "latencySeconds": {"p50": None, "p95": None, "max": None},
        "visitShareWithin60s": None,
    }


def record_counts(record: NightRecord, expected: int) -> dict[str, Any]:
    """The counts of a summary from the durable record alone (a night that failed)."""
    return {
        "ccdsExpected": expected,
        "ccdsIngested": len(record.ingested),
        "ccdsProcessed": len(record.processed),
        "ccdsFailed": len(record.failed),
        "ccdsPublished": len(record.published),
        "failures": {f"{v}/{d}": why for (v, d), why in sorted(record.failed.items())},
        "alerts": record.alerts,
    }


def night_summary(records: NightRecords | None, outcome: ReplayOutcome) -> dict[str, Any]:
    """Counts from the durable record (what this run saw as events, for a run without one),
    so a resumed night counts the CCDs an earlier run finished; latency from this run's events.
    """
    p, r = outcome.progress, outcome.record
    expected = p.expected
    failed = {**{k: v for k, v in r.failed.items() if k in expected}, **p.failed}
    processed = (p.processed | r.processed) & expected
    for key in processed:
        failed.pop(key, None)
    deferred = {k: why for k, why in failed.items() if why.startswith(f"{OVERLOAD}:")}
    for key in deferred:
        failed.pop(key)
    published = {**p.alerts_by_ccd, **{k: n for k, n in r.published.items() if k in expected}}
    ccd_latency = list(p.latencies.values())
    summary: dict[str, Any] = {
        "complete": outcome.complete,
        "wallSeconds": round(outcome.wall_seconds, 1),
        "enableSeconds": _rounded(outcome.enable_seconds),
        "visits": len(outcome.visits),
        "ccdsExpected": len(expected),
        "ccdsIngested": len((p.ingested | r.ingested) & expected),
        "ccdsProcessed": len(processed),
        "ccdsFailed": len(failed),
        # left to the daytime catch-up by the overload policy: ended, not lost
        "ccdsDeferred": len(deferred),
        "ccdsPublished": len(published),
        "failures": {f"{v}/{d}": why for (v, d), why in sorted(failed.items())},
        "alerts": sum(published.values()),
        "alertsThisRun": p.alerts,
        "duplicatePublications": p.duplicate_publications,
        "recoveries": p.recoveries,
        "stalls": outcome.stalls,
        "latencySeconds": {
            "p50": _quantile(ccd_latency, 0.5),
            "p95": _quantile(ccd_latency, 0.95),
            "max": _quantile(ccd_latency, 1.0),
        },
        "visitShareWithin60s": None,
        "drive": outcome.drive.as_dict(),
    }
    if outcome.waiting_for:
        summary["waitingFor"] = outcome.waiting_for
    if outcome.placement:
        summary["placement"] = outcome.placement
        summary["nodeRoles"] = outcome.node_roles
    if outcome.node_losses:
        summary["nodeLosses"] = outcome.node_losses
    if records is not None:
        latency = latency_summary(records)
        summary["visitShareWithin60s"] = latency.visit_share_within_budget
        summary["latencySummary"] = latency.to_dict()
        summary["workerCpuPerCcd"] = {
            k: round(v, 4) for k, v in worker_cpu_per_ccd(records.outcomes).items()
        }
    return summary


async def write_reports(
    pool: asyncpg.Pool,
    config: SystemConfig,
    records: NightRecords,
    visits: list[int],
    night: Path,
    out: Path,
    node_losses: list[dict[str, Any]] | None = None,
) -> dict[str, str]:
    truth = load_truth(night / "truth.sqlite", visits)
    dia = await _diasources(pool, config, visits)
    paths = write_night_reports(
        records,
        out / "reports",
        truth=truth,
        diasources=dia,
        reliability_threshold=_alert_threshold(config),
        node_losses=node_losses,
    )
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


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)
