"""Rubin's Avro alert schema, the latest version shipped in ``lsst-alert-packet``.

The schema files are read through ``lsst.alert.packet.Schema`` (which resolves the nested
diaSource/diaObject/... records) and parsed once with ``fastavro.parse_schema``. The Confluent
schema id is the package's own convention (``get_schema_id``: major * 100 + minor, 1101 for
v11.1), so brokers can look the schema up in Rubin's registry.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import fastavro

from state.errors import ConfigurationError


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # the Avro primitive: long, int, double, float, boolean, string, bytes
    nullable: bool


@dataclass(frozen=True)
class AlertSchema:
    version: str  # "11.1"
    schema_id: int  # the Confluent registry id (1101)
    definition: dict[str, Any]
    parsed: Any  # fastavro's parsed schema
    records: dict[str, tuple[Field, ...]]  # "diaSource", "diaObject", ... -> fields

    def fields(self, record: str) -> tuple[Field, ...]:
        return self.records[record]

    def field_names(self, record: str) -> list[str]:
        return [f.name for f in self.records[record]]


def _primitive(t: Any) -> tuple[str, bool]:
    if isinstance(t, list):
        rest = [x for x in t if x != "null"]
        base, _ = _primitive(rest[0])
        return base, "null" in t
    if isinstance(t, dict):
        if "logicalType" in t:
            return t["type"], False
        return t.get("type", "record"), False
    return str(t), False


def _collect(node: Any, out: dict[str, tuple[Field, ...]]) -> None:
    if isinstance(node, dict):
        if node.get("type") == "record" and "fields" in node:
            short = node["name"].rsplit(".", 1)[-1]
            if short not in out:
                out[short] = tuple(Field(f["name"], *_primitive(f["type"])) for f in node["fields"])
        for v in node.values():
            _collect(v, out)
    elif isinstance(node, list):
        for v in node:
            _collect(v, out)


@functools.cache
def latest_schema() -> AlertSchema:
    """The newest alert schema in the installed ``lsst-alert-packet``."""
    try:
        from lsst.alert.packet import Schema, get_latest_schema_version
    except ImportError as e:
        raise ConfigurationError("the alert schema needs the 'lsst-alert-packet' package") from e
    major, minor = get_latest_schema_version()
    schema = Schema.from_file()
    definition = {k: v for k, v in schema.definition.items() if not k.startswith("__")}
    records: dict[str, tuple[Field, ...]] = {}
    _collect(definition, records)
    return AlertSchema(
        version=f"{major}.{minor}",
        schema_id=schema.get_schema_id(),
        definition=definition,
        parsed=fastavro.parse_schema(definition),
        records=records,
    )
