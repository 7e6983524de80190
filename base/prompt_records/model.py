"""The records of prompt processing: what was observed, when each stage ended, how each CCD ended.

Plain frozen dataclasses, validated on construction (``InvalidInputError``), and
:class:`NightRecords`, what :meth:`PromptRecords.fetch_night` returns for the reports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from state.errors import InvalidInputError
from state.events import PROMPT_STAGES

#: The stages of one CCD, in pipeline order (docs/events.md).
STAGES = PROMPT_STAGES
STAGE_INDEX = {s: i for i, s in enumerate(STAGES)}
#: Stages that may be recorded once for the whole visit (``detector=None``).
VISIT_STAGES = frozenset({"endReadout", "inBuffer", "ingested"})
#: The detector number under which a whole-visit stage is stored.
VISIT_DETECTOR = -1

#: ``deferred``: left to the daytime catch-up by the overload policy (base.prompt.overload).
STATUSES = ("processed", "failed", "abandoned", "skipped", "deferred")
BANDS = ("u", "g", "r", "i", "z", "y")


def _set(obj: object, name: str, value: object) -> None:
    """Store the normalized value (plain int/float, not numpy) on a frozen dataclass."""
    object.__setattr__(obj, name, value)


def _finite(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"{name} must be a number, not {value!r}") from e
    if not math.isfinite(v):
        raise InvalidInputError(f"{name} must be finite, not {v}")
    return v


def _metric(name: str, value: float | None) -> float | None:
    """A data-quality metric: None or NaN means not measured; infinity is an error."""
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"{name} must be a number or None, not {value!r}") from e
    if math.isnan(v):
        return None
    if math.isinf(v):
        raise InvalidInputError(f"{name} must be finite or NaN (not measured), not {v}")
    return v


def _nonneg_int(name: str, value: int, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidInputError(f"{name} must be an integer, not {value!r}")
    if value < minimum:
        raise InvalidInputError(f"{name} must be >= {minimum}, not {value}")
    return int(value)


@dataclass(frozen=True)
class VisitRecord:
    """One visit as observed; ``obs_mjd`` is the simulated start of the exposure (TAI MJD)."""

    visit: int
    day_obs: int
    camera: str
    band: str
    ra: float
    dec: float
    obs_mjd: float
    exposure_time: float
    n_detectors: int
    field_id: int | None = None

    def __post_init__(self) -> None:
        _set(self, "visit", _nonneg_int("visit", self.visit))
        _set(self, "day_obs", _nonneg_int("day_obs", self.day_obs, 19000101))
        if not self.camera or not isinstance(self.camera, str):
            raise InvalidInputError("camera must be a non-empty name")
        if self.band not in BANDS:
            raise InvalidInputError(f"band must be one of {''.join(BANDS)}, not {self.band!r}")
        for name in ("ra", "dec", "obs_mjd", "exposure_time"):
            _set(self, name, _finite(name, getattr(self, name)))
        if not (0.0 <= self.ra < 360.0) or not (-90.0 <= self.dec <= 90.0):
            raise InvalidInputError(f"ra/dec out of range: ({self.ra}, {self.dec})")
        if self.exposure_time <= 0:
            raise InvalidInputError(f"exposure_time must be > 0, not {self.exposure_time}")
        _set(self, "n_detectors", _nonneg_int("n_detectors", self.n_detectors, 1))
        if self.field_id is not None:
            _set(self, "field_id", _nonneg_int("field_id", self.field_id))


@dataclass(frozen=True)
class StageTime:
    """The TAI (Unix seconds) at which ``stage`` ended for one CCD, or the whole visit."""

    visit: int
    detector: int | None
    stage: str
    tai: float

    def __post_init__(self) -> None:
        _set(self, "visit", _nonneg_int("visit", self.visit))
        if self.stage not in STAGE_INDEX:
            raise InvalidInputError(
                f"unknown stage {self.stage!r}; the stages are {', '.join(STAGES)}"
            )
        if self.detector is None:
            if self.stage not in VISIT_STAGES:
                raise InvalidInputError(
                    f"stage {self.stage!r} needs a detector; only {sorted(VISIT_STAGES)}"
                    " may be recorded for the whole visit"
                )
        else:
            _set(self, "detector", _nonneg_int("detector", self.detector))
        _set(self, "tai", _finite("tai", self.tai))

    @property
    def stored_detector(self) -> int:
        return VISIT_DETECTOR if self.detector is None else int(self.detector)


@dataclass(frozen=True)
class CcdOutcome:
    """How one CCD's prompt processing ended (the latest attempt), with its data quality."""

    visit: int
    detector: int
    attempt: int
    status: str
    failure_type: str | None = None
    reason: str = ""
    recovery: str = "none"
    n_dia_sources: int = 0
    n_alerts: int = 0
    zeropoint: float | None = None
    sky_level: float | None = None
    seeing_arcsec: float | None = None
    psf_fwhm_px: float | None = None
    astrom_rms_mas: float | None = None
    n_sources: int | None = None
    flags: tuple[str, ...] = ()
    # The CCD worker child's CPU split of this CCD (``base.prompt.ccd_work.CPU_SPLIT``).
    cpu_preload_s: float | None = None
    cpu_handoff_s: float | None = None
    cpu_raw_s: float | None = None
    pixel_cpu_s: float | None = None
    cpu_outputs_s: float | None = None
    cpu_rest_s: float | None = None
    cpu_gc_s: float | None = None
    minor_faults: int | None = None
    preload_minor_faults: int | None = None

    def __post_init__(self) -> None:
        _set(self, "visit", _nonneg_int("visit", self.visit))
        _set(self, "detector", _nonneg_int("detector", self.detector))
        _set(self, "attempt", _nonneg_int("attempt", self.attempt, 1))
        if self.status not in STATUSES:
            raise InvalidInputError(f"status must be one of {STATUSES}, not {self.status!r}")
        if self.status in ("failed", "abandoned", "deferred") and not self.failure_type:
            raise InvalidInputError(f"a {self.status} CCD needs a failure_type")
        _set(self, "n_dia_sources", _nonneg_int("n_dia_sources", self.n_dia_sources))
        _set(self, "n_alerts", _nonneg_int("n_alerts", self.n_alerts))
        if self.n_sources is not None:
            _set(self, "n_sources", _nonneg_int("n_sources", self.n_sources))
        for name in (*METRICS, *WORKER_CPU_S):
            _set(self, name, _metric(name, getattr(self, name)))
        for name in WORKER_FAULTS:
            if getattr(self, name) is not None:
                _set(self, name, _nonneg_int(name, getattr(self, name)))
        if self.failure_type is not None and not isinstance(self.failure_type, str):
            raise InvalidInputError(f"failure_type must be text, not {self.failure_type!r}")
        for name in ("reason", "recovery"):
            if not isinstance(getattr(self, name), str):
                raise InvalidInputError(f"{name} must be text, not {getattr(self, name)!r}")
        if isinstance(self.flags, str) or not all(isinstance(f, str) for f in self.flags):
            raise InvalidInputError(f"flags must be a sequence of strings, not {self.flags!r}")
        _set(self, "flags", tuple(self.flags))


METRICS = ("zeropoint", "sky_level", "seeing_arcsec", "psf_fwhm_px", "astrom_rms_mas")
#: The worker's CPU split of a CCD (core-seconds) and its page faults, as ``CcdOutcome`` holds.
WORKER_CPU_S = ("cpu_preload_s", "cpu_handoff_s", "cpu_raw_s", "pixel_cpu_s", "cpu_outputs_s",
                "cpu_rest_s", "cpu_gc_s")  # fmt: skip
WORKER_FAULTS = ("minor_faults", "preload_minor_faults")
WORKER_CPU = (*WORKER_CPU_S, *WORKER_FAULTS)


def worker_cpu_per_ccd(outcomes: Sequence[CcdOutcome]) -> dict[str, float]:
    """The worker's CPU split per processed CCD (the mean of each part over the CCDs that
    carry one), ``worker_core_s`` its sum (the collector's share is inside the parts) and
    ``overhead_core_s`` all of it but ``run_ccd``; empty when no CCD carries a split."""
    rows = [o for o in outcomes if o.status == "processed" and o.pixel_cpu_s is not None]
    if not rows:
        return {}
    mean = {k: sum(float(getattr(o, k) or 0) for o in rows) / len(rows) for k in WORKER_CPU}
    whole = sum(v for k, v in mean.items() if k in WORKER_CPU_S and k != "cpu_gc_s")
    return {
        "ccds": len(rows),
        "worker_core_s": whole,
        "overhead_core_s": whole - mean["pixel_cpu_s"],
        **mean,
    }


@dataclass(frozen=True)
class Attempt:
    """One attempt at one CCD, as kept in the append-only attempt log."""

    visit: int
    detector: int
    attempt: int
    status: str
    failure_type: str | None
    reason: str
    recovery: str


@dataclass(frozen=True)
class CcdTimes:
    """Stage times per CCD: ``tai[k, s]`` is when stage ``STAGES[s]`` ended for CCD ``k``.

    A whole-visit stage row fills the CCDs of its visit that have no row of their own.
    NaN where the stage was never recorded.
    """

    visit: NDArray[np.int64]
    detector: NDArray[np.int32]
    tai: NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.visit)

    def stage(self, name: str) -> NDArray[np.float64]:
        return self.tai[:, STAGE_INDEX[name]]


@dataclass(frozen=True)
class NightRecords:
    """Everything recorded about one night (or a set of visits), ready for the reports.

    ``stages`` is a structured array (visit i8, detector i4, stage i1 index into STAGES, tai f8);
    whole-visit rows have ``detector == VISIT_DETECTOR``.
    """

    visits: tuple[VisitRecord, ...]
    stages: np.ndarray
    outcomes: tuple[CcdOutcome, ...]
    attempts: tuple[Attempt, ...] = ()
    day_obs: int | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.visits and len(self.stages) == 0 and not self.outcomes

    def visit_map(self) -> dict[int, VisitRecord]:
        return {v.visit: v for v in self.visits}

    def ccd_times(self) -> CcdTimes:
        """The stage-time matrix of every CCD seen in a per-CCD stage row or an outcome."""
        st = self.stages
        per_ccd = st[st["detector"] != VISIT_DETECTOR]
        key_dtype = np.dtype([("visit", "i8"), ("detector", "i4")])
        keys = np.empty(len(per_ccd) + len(self.outcomes), key_dtype)
        keys["visit"][: len(per_ccd)] = per_ccd["visit"]
        keys["detector"][: len(per_ccd)] = per_ccd["detector"]
        keys["visit"][len(per_ccd) :] = [o.visit for o in self.outcomes]
        keys["detector"][len(per_ccd) :] = [o.detector for o in self.outcomes]
        ordered, inverse = np.unique(keys, return_inverse=True)
        visit = ordered["visit"].astype(np.int64)
        detector = ordered["detector"].astype(np.int32)
        tai = np.full((len(ordered), len(STAGES)), np.nan)
        tai[inverse[: len(per_ccd)], per_ccd["stage"].astype(np.intp)] = per_ccd["tai"]
        whole = st[st["detector"] == VISIT_DETECTOR]
        lo = np.searchsorted(visit, whole["visit"], "left")
        hi = np.searchsorted(visit, whole["visit"], "right")
        for a, b, s, t in zip(lo, hi, whole["stage"], whole["tai"], strict=True):
            col = tai[a:b, s]
            col[np.isnan(col)] = t
        return CcdTimes(visit, detector, tai)


STAGE_DTYPE = np.dtype([("visit", "i8"), ("detector", "i4"), ("stage", "i1"), ("tai", "f8")])


def stage_array(rows: Sequence[StageTime]) -> np.ndarray:
    """StageTime rows as the structured array that :class:`NightRecords` holds."""
    out = np.empty(len(rows), STAGE_DTYPE)
    for i, r in enumerate(rows):
        out[i] = (r.visit, r.stored_detector, STAGE_INDEX[r.stage], r.tai)
    return out
