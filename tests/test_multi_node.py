"""``dmcs replay --nodes 3``: a head (summit) and two base raylets on this machine, components
placed across them by role, and ``--kill-node-at 2``: one base node killed as visit 2 starts,
its actors restarted on the survivor, the night still complete by counts; and Ctrl-C, after
which no node of the cluster is left.

Each is one real replay in a subprocess (fixture ``cluster_replay``): a 3-visit ``mini`` night
on three nodes with a node killed serves the placement and the node-loss assertions (a clean
three-node night would repeat the same start-up for no assertion of its own), and a 2-node one
interrupted once it is up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from summit.night_files import open_night
from tests.conftest import ClusterReplay
from tests.replay_checks import TAG, orphans

ROOT = Path(__file__).resolve().parent.parent

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


def test_three_nodes_place_components_by_role_and_a_base_node_killed_mid_night_costs_no_ccd(
    cluster_replay: Callable[..., ClusterReplay],
) -> None:
    """One night on three nodes serves both: the placement by role (taken when the system is
    up, before the kill) and the loss of a base node as visit 2 starts."""
    run = cluster_replay("--visits", "3", "--nodes", "3", "--kill-node-at", "2")
    _assert_complete_by_counts(run, ccds=12)
    s = run.summary
    roles, placed = s["nodeRoles"], s["placement"]
    assert sorted(roles.values()) == ["base", "base", "summit"]
    assert {roles[placed[name]] for name in SUMMIT} == {"summit"}
    base_side = {name: node for name, node in placed.items() if name not in SUMMIT}
    assert {roles[node] for node in base_side.values()} == {"base"}
    assert len(set(base_side.values())) == 2, "the base components spread across both nodes"
    assert "stopped the local Ray cluster" in run.output
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


def test_ctrl_c_stops_every_node_of_the_cluster(tmp_path: Path) -> None:
    """SIGINT once the system is up: the run says it was interrupted, and no process of any
    node (raylets, workers, GCS) nor its PostgreSQL outlives it."""
    out, tag = tmp_path / "replay", uuid.uuid4().hex
    command = [
        sys.executable, "-m", "commands.cli", "replay", "--visits", "2", "--speed", "5",
        "--out", str(out), "--no-progress", "--nodes", "2",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), TAG: tag}
    log = tmp_path / "replay.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 600
            while "dmcs is up" not in log.read_text() and proc.poll() is None:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(1)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    output = log.read_text()
    assert proc.returncode != 0
    assert "stopped the local Ray cluster" in output, output[-3000:]
    assert json.loads((out / "replay.json").read_text())["status"] == "interrupted"
    deadline = time.monotonic() + 20
    while (left := orphans(tag, out / "pg")) and time.monotonic() < deadline:
        time.sleep(1)
    assert left == []
