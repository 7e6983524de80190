"""The data repository registry: raws, calibrations and templates in PostgreSQL."""

from base.registry.records import (
    CalibRecord,
    DetectorRecord,
    ExposureRecord,
    RawRecord,
    TemplateRecord,
)
from base.registry.repository import Repository

__all__ = [
    "CalibRecord",
    "DetectorRecord",
    "ExposureRecord",
    "RawRecord",
    "Repository",
    "TemplateRecord",
]
