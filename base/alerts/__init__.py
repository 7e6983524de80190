"""Alerts: Rubin Avro packets, the filter language, the subscriber fan-out and the archive."""

from .archive import AlertArchive
from .filters import PREDEFINED, AlertFilter, FilterError, alert_table, compile_filter, predefined
from .packet import build_alerts, decode, frame_header, serialize, unframe
from .schema import AlertSchema, latest_schema
from .stream import AlertFanout, PublishStats, StreamMessage, Subscription

__all__ = [
    "PREDEFINED",
    "AlertArchive",
    "AlertFanout",
    "AlertFilter",
    "AlertSchema",
    "FilterError",
    "PublishStats",
    "StreamMessage",
    "Subscription",
    "alert_table",
    "build_alerts",
    "compile_filter",
    "decode",
    "frame_header",
    "latest_schema",
    "predefined",
    "serialize",
    "unframe",
]
