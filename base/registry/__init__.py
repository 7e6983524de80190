"""The data repository registry: raws, calibrations, templates and refcats in PostgreSQL."""

from base.registry.records import (
    CalibRecord,
    DetectorRecord,
    ExposureRecord,
    RawRecord,
    RefcatRecord,
    TemplateRecord,
)
from base.registry.repository import Repository

__all__ = [
    "CalibRecord",
    "DetectorRecord",
    "ExposureRecord",
    "RawRecord",
    "RefcatRecord",
    "Repository",
    "TemplateRecord",
]
