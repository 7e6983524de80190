"""The nightly reports of prompt processing: Performance (DMS-REQ-0099), Data Quality (-0097)."""

from .documents import ReportPaths, json_ready, write_night_reports
from .performance import performance_report
from .quality import data_quality_report, detection_efficiency
from .truth import TruthSources, as_diasources, load_truth, match

__all__ = [
    "ReportPaths",
    "TruthSources",
    "as_diasources",
    "data_quality_report",
    "detection_efficiency",
    "json_ready",
    "load_truth",
    "match",
    "performance_report",
    "write_night_reports",
]
