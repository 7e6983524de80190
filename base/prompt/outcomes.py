"""How one CCD ended, as the CCD processor records and announces it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from base.prompt_records.model import WORKER_CPU

#: Flag of a CCD whose raw was ingested without the header service's header (the service
#: was down or late): its exposure metadata are the camera's own, not DMS-REQ-0068's.
NO_HEADER = "no_header"

#: The data-quality figures a processed CCD reports (names of ``CcdOutcome`` fields).
QUALITY = ("zeropoint", "sky_level", "seeing_arcsec", "psf_fwhm_px", "astrom_rms_mas", "n_sources")


@dataclass(frozen=True)
class Outcome:
    status: str  # processed | failed | abandoned
    failure_type: str | None = None
    reason: str = ""
    recovery: str = "none"
    n_dia_sources: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    flags: tuple[str, ...] = ()


def _quality(result: dict[str, Any] | None) -> dict[str, Any]:
    """The data quality and the worker's CPU split of the CCD, as ``CcdOutcome`` fields."""
    summary = (result or {}).get("summary") or {}
    return {k: summary[k] for k in (*QUALITY, *WORKER_CPU) if summary.get(k) is not None}


def failure(
    failure_type: str,
    reason: str,
    *,
    status: str = "failed",
    metrics: dict[str, Any] | None = None,
    recovery: str = "left for batch",
) -> Outcome:
    return Outcome(status, failure_type, reason, recovery, metrics=_quality(metrics))


def success(result: dict[str, Any], n_dia_sources: int, *, duplicate: bool) -> Outcome:
    reason = "already stored by an earlier attempt; not repeated" if duplicate else ""
    return Outcome("processed", None, reason, "none", n_dia_sources, _quality(result))
