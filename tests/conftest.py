"""Shared fixtures: a Ray session, an embedded PostgreSQL and a running gateway."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from base.postgres import postgres_dsn


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave files worth looking at after a run (screenshots, reports)."""
    path = Path(__file__).resolve().parent.parent / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def pg_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL: ``DMCS_TEST_DSN`` if set, else an embedded server for the session."""
    with postgres_dsn(os.environ.get("DMCS_TEST_DSN"), tmp_path_factory.mktemp("pg")) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole test session (2 CPUs, no dashboard)."""
    from actors.runtime import init_ray, shutdown_ray

    init_ray(address=None, num_cpus=2)
    yield
    shutdown_ray()
