"""The system a replay runs: the configured components, with the CCD pool sized and wired.

Every component whose settings take a ``dsn`` gets the night's database; the CCD processors
get their place in the pool, and read their inputs (raws, calibrations, templates, the
reference catalogue) through the registry, where the night's products must be registered
(``base.registry.products.register_night``, which ``dmcs replay`` does). The processor
entry of the configuration is the template of the pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from base.registry.products import register_night
from base.registry.repository import Repository
from config.system import ComponentConfig, SystemConfig
from state.errors import ConfigurationError

PROCESSOR_CLASS = "base.prompt.ccd_processor:CcdProcessor"
BUFFER_CLASS = "summit.summit_buffer:SummitBuffer"
#: Components whose settings name the database (they connect to PostgreSQL themselves).
_SCHEMAS_OF = {
    "base.ingest:Ingest": ("registry_schema",),
    PROCESSOR_CLASS: ("registry_schema", "records_schema"),
    "base.prompt.association:Association": ("apdb_schema", "records_schema"),
    "base.prompt.alert_publisher:AlertPublisher": (
        "archive_schema",
        "apdb_schema",
        "records_schema",
    ),
}
DATABASE_USERS = frozenset(_SCHEMAS_OF)


#: Settings that name a PostgreSQL schema, with their defaults.
SCHEMA_SETTINGS = {
    "registry_schema": "registry",
    "apdb_schema": "apdb",
    "archive_schema": "alerts",
    "records_schema": "prompt",
}


def database_schemas(config: SystemConfig) -> set[str]:
    """Every PostgreSQL schema the system's components use (their settings, else defaults)."""
    return {
        str(spec.settings.get(key, SCHEMA_SETTINGS[key]))
        for spec in config.components
        for key in _SCHEMAS_OF.get(spec.cls, ())
    }


def registry_schemas(config: SystemConfig) -> list[str]:
    """The registry schemas the system's CCD processors read their inputs from."""
    default = SCHEMA_SETTINGS["registry_schema"]
    return sorted(
        {
            str(spec.settings.get("registry_schema", default))
            for spec in config.components
            if spec.cls == PROCESSOR_CLASS
        }
    )


async def register_products(config: SystemConfig, night: Path) -> dict[str, int]:
    """Register ``night``'s products where the processors of ``config`` look them up.

    Idempotent: a rerun or a resumed replay adds nothing; a product whose registered file
    differs from the night's (a night simulated again) is re-pointed. Returns the counts.
    """
    totals: dict[str, int] = {}
    for schema in registry_schemas(config):
        repo = await Repository.connect(config.database.dsn, schema)
        try:
            for key, n in (await register_night(repo, night)).items():
                totals[key] = totals.get(key, 0) + n
        finally:
            await repo.close()
    return totals


def _with_settings(spec: ComponentConfig, **settings: Any) -> ComponentConfig:
    return spec.model_copy(update={"settings": {**spec.settings, **settings}})


def _database_settings(spec: ComponentConfig, dsn: str, schema_prefix: str) -> dict[str, Any]:
    """``dsn``, and every schema the component's class uses renamed with ``schema_prefix``."""
    settings: dict[str, Any] = {"dsn": dsn}
    if schema_prefix:
        for key, default in SCHEMA_SETTINGS.items():
            if key in _SCHEMAS_OF.get(spec.cls, ()):
                settings[key] = schema_prefix + str(spec.settings.get(key, default))
    return settings


def check_processors(processors: int) -> int:
    """``processors``, or ``ConfigurationError`` for a pool without a CCD processor."""
    if processors < 1:
        raise ConfigurationError(f"need at least one CCD processor, not {processors}")
    return processors


def night_system_config(
    config: SystemConfig,
    *,
    dsn: str,
    processors: int,
    data_dir: Path | None = None,
    processor_cpus: float | None = None,
    schema_prefix: str = "",
    staging: Path | None = None,
) -> SystemConfig:
    """``config`` with a pool of ``processors`` CCD processors and the database wired in.

    ``schema_prefix`` renames every PostgreSQL schema, so several nights can share a server.
    ``staging``: the camera's staging area, whose readout records the SummitBuffer reconciles.
    """
    check_processors(processors)
    templates = [c for c in config.components if c.cls == PROCESSOR_CLASS]
    if not templates:
        raise ConfigurationError(f"the system configuration has no {PROCESSOR_CLASS} component")
    template = templates[0]
    components: list[ComponentConfig] = []
    for spec in config.components:
        if spec.cls == PROCESSOR_CLASS:
            continue
        if spec.cls in DATABASE_USERS:
            spec = _with_settings(spec, **_database_settings(spec, dsn, schema_prefix))  # noqa: PLW2901
        if spec.cls == BUFFER_CLASS and staging is not None:
            spec = _with_settings(spec, staging_dir=str(staging.resolve()))  # noqa: PLW2901
        components.append(spec)
    for index in range(processors):
        spec = template.model_copy(
            update={
                "name": f"CcdProcessor{index}",
                "num_cpus": template.num_cpus if processor_cpus is None else processor_cpus,
            }
        )
        components.append(
            _with_settings(
                spec,
                **_database_settings(template, dsn, schema_prefix),
                index=index,
                pool_size=processors,
            )
        )
    update: dict[str, Any] = {
        "components": tuple(components),
        "database": config.database.model_copy(update={"dsn": dsn}),
    }
    if data_dir is not None:
        update["data_dir"] = data_dir
    return config.model_copy(update=update)
