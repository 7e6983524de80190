"""What the registry stores: one frozen record per row of each table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ExposureRecord:
    visit: int
    image_name: str
    camera: str
    day_obs: int | None
    seq_num: int | None
    band: str | None
    exposure_time: float | None
    mjd_start: float | None
    ra: float | None
    dec: float | None
    field_id: int | None


@dataclass(frozen=True, slots=True)
class DetectorRecord:
    camera: str
    detector: int
    name: str
    vendor: str | None
    nx: int | None
    ny: int | None


@dataclass(frozen=True, slots=True)
class RawRecord:
    visit: int
    detector: int
    camera: str
    image_name: str
    path: str
    #: sha256 of the raw as the camera wrote it (what the summit buffer and ingest verify).
    checksum: str
    #: sha256 of the stored file (the raw with the header service's cards merged in).
    file_checksum: str
    byte_size: int
    nx: int
    ny: int
    n_amps: int
    header_merged: bool


@dataclass(frozen=True, slots=True)
class CalibRecord:
    camera: str
    detector: int
    calib_type: str
    band: str
    valid_start: float
    valid_end: float
    path: str
    checksum: str
    byte_size: int
    nx: int | None
    ny: int | None
    #: Why registration refused the file (unreadable, not the product it should be); the
    #: record says so to whoever needs the product, instead of its absence passing for "none".
    refused: str | None = None


@dataclass(frozen=True, slots=True)
class TemplateRecord:
    camera: str
    field_id: int
    band: str
    detector: int
    ra: float
    dec: float
    path: str
    checksum: str
    byte_size: int
    nx: int | None
    ny: int | None
    #: Why registration refused the file (unreadable, not the product it should be); the
    #: record says so to whoever needs the product, instead of its absence passing for "none".
    refused: str | None = None


@dataclass(frozen=True, slots=True)
class RefcatRecord:
    """A reference catalogue: a SQLite file with an ``objects`` table (docs/ccd_processing.md)."""

    camera: str
    name: str
    path: str
    checksum: str
    byte_size: int
    n_objects: int | None
    #: Why registration refused the file (unreadable, not the product it should be); the
    #: record says so to whoever needs the product, instead of its absence passing for "none".
    refused: str | None = None
