"""Latency and outcome records of prompt processing (PostgreSQL) and their latency summary."""

from .latency import BUDGET_S, Distribution, LatencySummary, StageStep, latency_summary
from .model import (
    METRICS,
    STAGES,
    STATUSES,
    VISIT_DETECTOR,
    VISIT_STAGES,
    WORKER_CPU,
    Attempt,
    CcdOutcome,
    CcdTimes,
    NightRecords,
    StageTime,
    VisitRecord,
    stage_array,
    worker_cpu_per_ccd,
)
from .store import STORE, PromptRecords

__all__ = [
    "BUDGET_S",
    "METRICS",
    "STAGES",
    "STATUSES",
    "STORE",
    "VISIT_DETECTOR",
    "VISIT_STAGES",
    "WORKER_CPU",
    "Attempt",
    "CcdOutcome",
    "CcdTimes",
    "Distribution",
    "LatencySummary",
    "NightRecords",
    "PromptRecords",
    "StageStep",
    "StageTime",
    "VisitRecord",
    "latency_summary",
    "stage_array",
    "worker_cpu_per_ccd",
]
