"""Validated settings of the summit-to-base data path: SummitBuffer, its link, and Ingest."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: 14 nights of LSSTCam raws (DMS-REQ-0177): ~1,000 visits x 189 CCDs x ~65 MB per night.
FOURTEEN_DAYS_BYTES = 14 * 1000 * 189 * 65 * 10**6


class LinkSettings(BaseModel):
    """The simulated summit-base network link."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    #: Link capacity, MB/s (10^6 bytes); 0 means limited by the hosts only.
    bandwidth_mbps: float = Field(default=0.0, ge=0)
    #: Whether the link starts up.
    up: bool = True


class SummitBufferSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    #: Bytes the buffer may hold (unsent plus retained raws).
    capacity_bytes: int = Field(default=FOURTEEN_DAYS_BYTES, gt=0)
    #: Fill fractions of the unsent backlog at which bufferAlarm escalates.
    warning_fraction: float = Field(default=0.5, gt=0, le=1)
    serious_fraction: float = Field(default=0.8, gt=0, le=1)
    critical_fraction: float = Field(default=0.95, gt=0, le=1)
    #: Seconds a confirmed raw is kept on the summit before it is deleted (0: at once).
    retention_seconds: float = Field(default=0.0, ge=0)
    #: Rate cap (MB/s) on sending the backlog after an outage; 0: as fast as the link allows.
    catchup_rate_mbps: float = Field(default=0.0, ge=0)
    #: Images of one visit sent at once (visits always go in acquisition order).
    max_in_flight: int = Field(default=4, ge=1, le=64)
    #: Retry backoff after a failed send: first delay and cap, seconds.
    retry_initial: float = Field(default=0.2, gt=0)
    retry_max: float = Field(default=5.0, gt=0)
    #: Bytes of written, unconfirmed raws kept in memory as verified, so that their send reads
    #: no file (beyond it, or after a restart, a raw is sent from its file); 0: always the file.
    send_from_memory_bytes: int = Field(default=1_000_000_000, ge=0)
    #: Seconds between bufferStatus telemetry samples.
    status_interval: float = Field(default=1.0, gt=0)
    #: The component that receives raws (``rpc_receive_raw``).
    ingest: str = "Ingest"
    #: The camera's DAQ staging area (empty: ``<data_dir>/staging``, which ``dmcs simulate
    #: drive`` stages into by default): raws are taken from it, and its readout records are
    #: reconciled with the manifest (``summit.readout_records``), with those of the areas
    #: ``endReadout`` pointed at inside ``accept_dirs``.
    staging_dir: str = ""
    #: Folders a raw may be read from besides the staging area (``endReadout``, ``acceptImage``,
    #: readout records): a URL whose file (``..`` and symlinks resolved) lies elsewhere is
    #: refused before anything is read.
    accept_dirs: tuple[str, ...] = ()
    #: Seconds between reconciliations while ENABLED (also done at once on enable).
    reconcile_interval: float = Field(default=5.0, gt=0)
    link: LinkSettings = LinkSettings()

    @model_validator(mode="after")
    def _ordered_thresholds(self) -> SummitBufferSettings:
        if not self.warning_fraction < self.serious_fraction < self.critical_fraction:
            raise ValueError("need warning_fraction < serious_fraction < critical_fraction")
        if self.retry_max < self.retry_initial:
            raise ValueError("retry_max must be at least retry_initial")
        return self


class IngestSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    #: PostgreSQL DSN of the registry; filled by the launcher from the system's database.
    dsn: str = ""
    #: PostgreSQL schema holding the registry tables (one registry per schema).
    registry_schema: str = Field(default="registry", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    #: Seconds after a raw arrives to wait for its header before ingesting raw headers only.
    header_timeout: float = Field(default=10.0, gt=0)
    #: The header service's folder of written headers: the only folder an announced header
    #: is read from, and looked in for a header whose announcement never arrived; empty:
    #: ``<data_dir>/HeaderService/headers``, beside Ingest's.
    header_dir: str = ""
    #: Registry retry backoff while PostgreSQL is unreachable: first delay and cap, seconds.
    retry_initial: float = Field(default=0.2, gt=0)
    retry_max: float = Field(default=5.0, gt=0)
    #: Seconds between ingestStatus telemetry samples.
    status_interval: float = Field(default=1.0, gt=0)
