"""The system's PostgreSQL: the configured DSN, or an embedded server that dmcs starts itself.

Components whose class sets ``uses_database = True`` get the DSN as their ``dsn`` setting
unless their settings already name one. The DSN comes from ``[database] dsn`` in the system
file, else the ``DMCS_DATABASE_DSN`` environment variable (read when the system starts), else
an embedded PostgreSQL (``pgserver``) in ``<data_dir>/postgres``, stopped with the system.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from actors.component_actor import load_component_class
from base.postgres import postgres_dsn, wait_for_database
from config.system import DSN_ENV, SystemConfig, check_dsn
from state.errors import ConfigurationError


def database_users(config: SystemConfig) -> list[str]:
    """Names of the components that need the DSN and were not given one."""
    return [
        c.name
        for c in config.components
        if not c.settings.get("dsn")
        and getattr(load_component_class(c.cls), "uses_database", False)
    ]


def check_dsn_env() -> str:
    """``$DMCS_DATABASE_DSN`` (checked), or empty when it is not set."""
    dsn = os.environ.get(DSN_ENV, "")
    if dsn:
        try:
            check_dsn(dsn)
        except ConfigurationError as e:
            raise ConfigurationError(f"${DSN_ENV}: {e}") from e
    return dsn


def configured_dsn(config: SystemConfig) -> str:
    """The DSN the system file or ``$DMCS_DATABASE_DSN`` gives (empty: embedded PostgreSQL)."""
    return config.database.dsn or check_dsn_env()


async def check_configured_database(config: SystemConfig) -> None:
    """Fail at once (``StorageError``) when the system's components need a configured DSN at
    which no PostgreSQL answers, rather than after every component waited ``startup_timeout``."""
    configured = configured_dsn(config)
    if configured and database_users(config):
        await wait_for_database(configured, config.startup_timeout)


@contextlib.contextmanager
def system_database(config: SystemConfig) -> Iterator[SystemConfig]:
    """Yield ``config`` with the DSN filled in where needed (starting PostgreSQL if must be)."""
    users = set(database_users(config))
    if not users:
        yield config
        return
    configured = configured_dsn(config)
    with postgres_dsn(
        configured, config.data_dir.resolve() / "postgres", start_timeout=config.startup_timeout
    ) as dsn:
        components = tuple(
            c.model_copy(update={"settings": {**c.settings, "dsn": dsn}}) if c.name in users else c
            for c in config.components
        )
        database = config.database.model_copy(update={"dsn": dsn})
        yield config.model_copy(update={"components": components, "database": database})
