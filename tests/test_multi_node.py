"""``dmcs replay --nodes 3``: a head (summit) and two base raylets on this machine, components
placed across them by role; and ``--kill-node-at 2``: one base node killed as visit 2 starts,
its actors restarted on the survivor, the night still complete by counts.

Each is one real replay in a subprocess (fixture ``cluster_replay``), a ``mini`` night of 2 or
3 visits, shared by the assertions about it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from summit.night_files import open_night
from tests.conftest import ClusterReplay

pytestmark = [pytest.mark.timeout(1200), pytest.mark.ray, pytest.mark.postgres]

SUMMIT = {"HeaderService", "SummitBuffer"}


def _assert_complete_by_counts(run: ClusterReplay, ccds: int) -> None:
    s = run.summary
    assert run.returncode == 0, run.output[-3000:]
    assert s["complete"], s.get("waitingFor") or s.get("failure")
    assert s["ccdsExpected"] == s["ccdsIngested"] == ccds
    assert s["ccdsProcessed"] + s["ccdsFailed"] == ccds  # every CCD ended
    assert s["duplicatePublications"] == 0
    assert run.apdb["duplicates"] == 0  # no diaSourceId twice
    assert run.apdb["ccds_with_alerts_unlike_diasources"] == 0
    assert s["alerts"] == run.apdb["alerts"] == run.apdb["diasources"]
    assert run.orphans == [], "processes of the replay (a node of its cluster) outlived it"
    assert "leftProcesses" not in s


def test_three_nodes_place_components_by_role_and_the_night_completes(
    cluster_replay: Callable[..., ClusterReplay],
) -> None:
    run = cluster_replay("--visits", "2", "--nodes", "3")
    _assert_complete_by_counts(run, ccds=8)
    roles, placed = run.summary["nodeRoles"], run.summary["placement"]
    assert sorted(roles.values()) == ["base", "base", "summit"]
    assert {roles[placed[name]] for name in SUMMIT} == {"summit"}
    base_side = {name: node for name, node in placed.items() if name not in SUMMIT}
    assert {roles[node] for node in base_side.values()} == {"base"}
    assert len(set(base_side.values())) == 2, "the base components spread across both nodes"
    assert "stopped the local Ray cluster" in run.output


def test_a_base_node_killed_mid_night_costs_no_ccd_and_is_reported(
    cluster_replay: Callable[..., ClusterReplay],
) -> None:
    run = cluster_replay("--visits", "3", "--nodes", "3", "--kill-node-at", "2")
    _assert_complete_by_counts(run, ccds=12)
    s = run.summary
    (loss,) = s["nodeLosses"]
    assert s["nodeRoles"][loss["nodeId"]] == "base"
    assert loss["visit"] == open_night(run.out / "night").visits[1].visit_id
    assert loss["actors"], "the killed node hosted components"
    for name in loss["actors"]:
        if name != "bus":  # the bus restarts by itself; components come back in STANDBY
            assert f"{name} restarted (restart 1); re-enabled" in s["recoveries"]
    assert loss["ccdsFailed"] == len(loss["failed"])
    for key, why in loss["failed"].items():  # recorded as failed, with a reason
        assert s["failures"][key] == why and why
    perf = json.loads(Path(s["reports"]["performance_json"]).read_text())
    assert perf["nodeLosses"][0]["nodeId"] == loss["nodeId"]
    assert "Node losses" in Path(s["reports"]["performance_md"]).read_text()
