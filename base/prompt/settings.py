"""Validated settings of the prompt-processing components."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from algorithms.partition import REGION_ORDER
from config.system import OverloadConfig


class _Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    #: PostgreSQL DSN (filled by the launcher from the system's database when empty).
    dsn: str = ""
    #: Seconds ``start`` waits (within its command's timeout) for the component's warm-up:
    #: its numba kernels compiled, or loaded from numba's on-disk cache, and checked on a small
    #: simulated input. A cold cache that takes longer finishes before the first visit's work.
    warm_up_wait: float = Field(default=300.0, ge=0)


class CcdProcessorSettings(_Settings):
    #: This processor preloads the detectors with ``detector % pool_size == index`` (and, with
    #: ``scheduling = "fixed"``, processes only those).
    index: int = Field(default=0, ge=0)
    pool_size: int = Field(default=1, ge=1)
    #: ``availability``: any idle processor of the pool claims the next ingested CCD (its own
    #: detectors first; another's once that one's owner has left it unclaimed ``claim_grace``
    #: seconds). ``fixed``: each processor does its own detectors only.
    scheduling: Literal["availability", "fixed"] = "availability"
    #: Seconds a CCD is left to the processor that preloaded it before an idle one takes it.
    claim_grace: float = Field(default=0.5, ge=0)
    #: Seconds a claim lasts unless renewed; a dead processor's CCDs go to others after it.
    claim_lease: float = Field(default=15.0, gt=0)
    #: Detectors whose CCDs are held ``stall_seconds`` in the worker before their processing
    #: (within ``ccd_timeout``): a slow CCD on demand, for tests and scheduling benchmarks.
    stall_detectors: tuple[int, ...] = ()
    stall_seconds: float = Field(default=0.0, ge=0)
    #: The system's ``[overload]`` section (the launcher's copy; see ``config.system``).
    overload: OverloadConfig = OverloadConfig()
    #: Seconds one CCD may take before it is abandoned (its worker process killed).
    ccd_timeout: float = Field(default=120.0, gt=0)
    #: Attempts per CCD before its APDB write (Rubin: no retry after it).
    max_attempts: int = Field(default=3, ge=1)
    #: Seconds between retries of a CCD whose association peer is not ready.
    retry_backoff: float = Field(default=1.0, gt=0)
    #: Seconds a CCD waits in total for the association peer before it is failed.
    association_wait: float = Field(default=120.0, gt=0)
    #: Seconds between looks in the registry for ingested CCDs whose ``imageIngested`` never
    #: arrived (events notify; the registry is the record).
    reconcile_interval: float = Field(default=10.0, gt=0)
    #: Directory of the decoded calibrations and templates the pool's workers share as
    #: memory-mapped files (``base.input_cache``); empty: ``ccd-input-cache`` beside the
    #: processors' data directories. ``input_cache_gb = 0`` turns it off (each preload reads
    #: and decodes its files again).
    input_cache_dir: str = ""
    input_cache_gb: float = Field(default=6.0, ge=0)
    #: Seconds the warm-up may take in all before its worker is killed.
    warm_up_timeout: float = Field(default=600.0, gt=0)
    association: str = "Association"
    #: Association partitions (``[association] partitions``): each CCD's results go to the
    #: partition owning its footprint centre's tile (``base.prompt.partitions``).
    association_partitions: int = Field(default=1, ge=1)
    association_tile_order: int = Field(default=REGION_ORDER, ge=0, le=16)
    #: Where raws, calibrations, templates and the reference catalogue are looked up.
    registry_schema: str = "registry"
    records_schema: str = "prompt"

    @model_validator(mode="after")
    def _index_in_pool(self) -> Self:
        if self.index >= self.pool_size:
            raise ValueError(f"processor {self.index} of a pool of {self.pool_size} does not exist")
        return self


class AssociationSettings(_Settings):
    apdb_schema: str = "apdb"
    radius_arcsec: float = Field(default=1.0, gt=0)
    #: Padding of the CCD footprint for the APDB preload, arcsec.
    pad_arcsec: float = Field(default=10.0, ge=0)
    history_days: float = Field(default=365.0, gt=0)
    #: The reliability model's JSON (empty: the one shipped, base/reliability_model.json).
    reliability_model: str = ""
    #: DIASources below this reliability are stored but not alerted (None: the threshold
    #: recommended when the model was trained, in its metadata).
    alert_reliability_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    records_schema: str = "prompt"
    #: This actor's partition of the sky, of ``partitions`` (``config.system.partitioned``).
    partition: int = Field(default=0, ge=0)
    partitions: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _partition_in_range(self) -> Self:
        if self.partition >= self.partitions:
            raise ValueError(f"partition {self.partition} of {self.partitions} does not exist")
        return self


class AlertPublisherSettings(_Settings):
    archive_schema: str = "alerts"
    #: The APDB whose alert outbox this publisher drains (``base.apdb.outbox``).
    apdb_schema: str = "apdb"
    #: Seconds between reads of the outbox when no notification arrives (a lost NOTIFY,
    #: a dropped listening connection).
    outbox_poll: float = Field(default=2.0, gt=0)
    #: The alert latency requirement, seconds from end of readout (LSE-61 OTT1).
    latency_budget: float = Field(default=60.0, gt=0)
    records_schema: str = "prompt"
