"""Placement by node role (``[placement] by_role``): summit components on ``summit`` nodes,
base components and the bus on ``base`` nodes, through Ray custom resources; the embedded
single node offers every role."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from actors.launcher import placement
from actors.runtime import BATCH_RESOURCE, ROLE_CAPACITY, local_resources, role_resource
from config.system import ComponentConfig, load_system_config

ROOT = Path(__file__).resolve().parent.parent


def _component(cls: str, **extra: str) -> ComponentConfig:
    return ComponentConfig.model_validate({"name": "C", "class": cls, **extra})


def test_role_defaults_to_the_components_side_and_is_validated() -> None:
    assert _component("summit.summit_buffer:SummitBuffer").placement_role == "summit"
    assert _component("base.ingest:Ingest").placement_role == "base"
    assert _component("base.ingest:Ingest", role="summit").placement_role == "summit"
    with pytest.raises(ValueError, match="role"):
        _component("base.ingest:Ingest", role="moon")


def test_default_system_places_nothing_and_names_every_side() -> None:
    config = load_system_config()
    assert config.placement.by_role is False
    assert placement(config, "summit") == {} and placement(config, "base") == {}
    roles = {c.name: c.placement_role for c in config.components}
    assert roles["HeaderService"] == roles["SummitBuffer"] == "summit"
    assert roles["Ingest"] == roles["Association"] == roles["AlertPublisher"] == "base"


def test_embedded_ray_offers_every_role() -> None:
    assert local_resources() == {
        role_resource(r): ROLE_CAPACITY for r in ("summit", "base", "batch")
    }
    assert local_resources(2)[BATCH_RESOURCE] == 2.0


@pytest.mark.ray
def test_two_node_cluster_places_components_by_role(tmp_path: Path) -> None:
    """A real two-raylet Ray cluster in its own process (tests/placement_cluster.py)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "tests.placement_cluster", str(tmp_path)],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert "no Ray node offers role 'batch'" in out["error"]
    assert out["actors_after_error"] == 0  # refused before anything started
    assert "no node offers role 'batch'" in out["batch_error"]
    assert out["nodes"] == {
        "HeaderService": "head",  # summit.* -> summit node (the head)
        "Summitish": "head",  # role = "summit" in its entry
        "Pipeline": "second",  # everything else -> base
        "bus": "second",
    }
    assert out["embedded_address"] != out["cluster_address"]  # a private Ray, not the cluster


def test_batch_tasks_go_to_batch_nodes_where_nodes_have_roles(ray_session: None) -> None:
    """The session's embedded Ray offers every role: batch tasks ask for the batch role."""
    from actors.reprocess import RayExecutor

    executor = RayExecutor(workers=1)
    assert executor.options["resources"][role_resource("batch")] == pytest.approx(1e-3)


def test_a_local_cluster_sizes_every_node_for_its_whole_role() -> None:
    """Each base node offers the CPUs of the whole base side, so one survivor can take the
    actors of a lost node; fewer than two nodes is no cluster."""
    from actors.cluster import LocalCluster, cpus_by_role
    from commands.replay.night_system import night_system_config
    from state.errors import ConfigurationError

    config = night_system_config(load_system_config(), dsn="", processors=3)
    need = cpus_by_role(config.components)
    assert need["base"] == sum(c.num_cpus for c in config.components if c.placement_role == "base")
    assert need["base"] >= 3  # the three processors ask for a CPU each
    with pytest.raises(ConfigurationError, match="at least 2 nodes"):
        LocalCluster(1, cpus=need)
