"""APDB table definitions from Rubin's ``apdb.yaml`` (package ``lsst-sdm-schemas``), read by
Rubin's own schema library, lsst-felis.

Column names, types and nullability come from the yaml; nothing is copied by hand. The DDL that
creates the tables is frozen per migration in ``base/apdb/sql/`` (generated once from these
definitions; ``tests/test_db.py`` checks that it still matches). dmcs adds
a few columns of its own, all documented here:

* ``pixelId`` (bigint) on DiaObject, DiaObjectLast, DiaSource and DiaForcedSource: the HEALPix
  nested index of the position (see :mod:`base.apdb.spatial`), as Rubin's SQL APDB does with HTM.
* DiaObjectLast carries *every* DiaObject column (a superset of apdb.yaml's ten), so the region
  preload reads one narrow-by-index table and never joins the versioned DiaObject history.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

import felis.datamodel
import numpy as np
import pydantic

from state.errors import ConfigurationError

#: Tables dmcs keeps, in creation order.
TABLES: tuple[str, ...] = (
    "DiaObject",
    "DiaObjectLast",
    "DiaSource",
    "DiaForcedSource",
    "SSObject",
    "SSSource",
)
SPATIAL_TABLES = frozenset({"DiaObject", "DiaObjectLast", "DiaSource", "DiaForcedSource"})

_PG_TYPES = {
    "long": "bigint",
    "int": "integer",
    "short": "smallint",
    "double": "double precision",
    "float": "real",
    "boolean": "boolean",
    "char": "text",
    "string": "text",
    "text": "text",
    "timestamp": "timestamp",
}
_NP_TYPES = {
    "long": np.int64,
    "int": np.int32,
    "short": np.int16,
    "double": np.float64,
    "float": np.float32,
    "boolean": np.bool_,
    "char": np.str_,
    "string": np.str_,
    "text": np.str_,
    "timestamp": np.float64,
}
#: The in-memory stand-in for NULL per kind of column (floats: NaN; ids: 0, as Rubin's pipelines).
_NULL_FILL = {"float": "'NaN'", "int": "0", "bool": "false", "str": "''"}


@dataclass(frozen=True)
class Column:
    name: str
    datatype: str  # the Felis datatype from apdb.yaml
    nullable: bool

    # Cached: the bulk codecs ask for these for every column of every COPY.
    @functools.cached_property
    def pg_type(self) -> str:
        return _PG_TYPES[self.datatype]

    @functools.cached_property
    def np_type(self) -> type:
        return _NP_TYPES[self.datatype]

    @functools.cached_property
    def kind(self) -> str:
        """One of ``float``, ``int``, ``bool``, ``str``: how NULL is represented in memory."""
        t = self.np_type
        if t in (np.float64, np.float32):
            return "float"
        if t is np.bool_:
            return "bool"
        if t is np.str_:
            return "str"
        return "int"


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    indexes: tuple[tuple[str, ...], ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")


def _refs(value: str | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    return tuple(v.rsplit(".", 1)[-1] for v in items)


@functools.cache
def felis_schema() -> felis.datamodel.Schema:
    """``apdb.yaml`` of the installed ``lsst-sdm-schemas``, read and validated by lsst-felis."""
    try:
        path = resources.files("lsst.sdm.schemas").joinpath("apdb.yaml")
        return felis.datamodel.Schema.from_uri(str(path), context={"id_generation": True})
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise ConfigurationError("apdb.yaml not found: install 'lsst-sdm-schemas'") from e
    except (pydantic.ValidationError, ValueError) as e:
        raise ConfigurationError(f"apdb.yaml is not a valid Felis schema: {e}") from e


@functools.cache
def tables() -> dict[str, Table]:
    """dmcs's APDB tables, keyed by name."""
    raw = {t.name: t for t in felis_schema().tables}
    out: dict[str, Table] = {}
    for name in TABLES:
        source = raw["DiaObject"] if name == "DiaObjectLast" else raw[name]
        cols = [Column(c.name, c.datatype.value, bool(c.nullable)) for c in source.columns]
        if name in SPATIAL_TABLES:
            cols.append(Column("pixelId", "long", False))
        pk = _refs(raw[name].primary_key)
        if name == "DiaObjectLast":
            pk = ("diaObjectId",)
        idx = [_refs(i.columns) for i in raw[name].indexes]
        if name in SPATIAL_TABLES:
            idx.append(("pixelId",))
        out[name] = Table(name, tuple(cols), pk, tuple(idx))
    return out


def schema_version() -> str:
    """The version of the installed ``apdb.yaml`` (the tables' column lists come from it)."""
    v = felis_schema().version
    return str(v if isinstance(v, str) else v.current)


def q(name: str) -> str:
    """Quote an identifier (Rubin's names are camelCase, so they always need quoting)."""
    return '"' + name.replace('"', '""') + '"'


def create_table_sql(table: Table, schema: str) -> list[str]:
    """CREATE TABLE and CREATE INDEX statements for ``table`` in ``schema``."""
    cols = ",\n  ".join(
        f"{q(c.name)} {c.pg_type}{'' if c.nullable else ' NOT NULL'}" for c in table.columns
    )
    pk = f",\n  PRIMARY KEY ({', '.join(q(k) for k in table.primary_key)})"
    stmts = [
        f"CREATE TABLE IF NOT EXISTS {q(schema)}.{q(table.name)} (\n  {cols}"
        f"{pk if table.primary_key else ''}\n)"
    ]
    for cols_ in table.indexes:
        iname = f"idx_{table.name}_{'_'.join(cols_)}"
        stmts.append(
            f"CREATE INDEX IF NOT EXISTS {q(iname)} ON {q(schema)}.{q(table.name)} "
            f"({', '.join(q(c) for c in cols_)})"
        )
    return stmts


def select_columns_sql(table: Table, alias: str = "") -> str:
    """``array_agg`` expressions giving one NULL-free array per column (fast to decode)."""
    prefix = f"{alias}." if alias else ""
    parts = []
    for c in table.columns:
        expr = f"{prefix}{q(c.name)}"
        if c.nullable:
            expr = f"coalesce({expr}, {_NULL_FILL[c.kind]})"
        parts.append(f"array_agg({expr})")
    return ", ".join(parts)


def ddl_text(tables_: Iterable[Table], header: str) -> str:
    """CREATE statements of ``tables_`` as one script, ``{schema}`` standing for the schema:
    the text a frozen migration is generated from, once."""
    token = "__schema__"
    lines = [f"-- {header}; frozen: never edit, add a migration."]
    for table in tables_:
        lines += [s.replace(q(token), "{schema}") + ";" for s in create_table_sql(table, token)]
    return "\n".join(lines) + "\n"


def generated_ddl() -> str:
    """The DDL of every table in :data:`TABLES` from the installed ``apdb.yaml``: what
    ``base/apdb/sql/0001_apdb_tables.sql`` froze (``tests/test_db.py`` compares them)."""
    header = f"APDB tables generated from apdb.yaml {schema_version()} by lsst-felis"
    return ddl_text(tables().values(), header)
