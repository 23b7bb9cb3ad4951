"""The lemon-node store feeds the next run's node choice: a node with a ``hardware`` verdict is kept out
while a spare can take its place, and re-admitted only after the burn-in (node probe + the known-answer
compute check) passes. Only the launcher (the cluster) is faked; the store, probe and check are real."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from health.detectors.lemon import LemonNodeStore
from spec.config import RunConfig
from orchestrator.journal import Journal, read_journal
from orchestrator.launcher.base import LaunchSpec, Launcher, LauncherEvent
from tests.conftest import BASE, deep_merge


class Launched(Exception):
    """Ends the test at the first launch: the node choice is what is under test."""


class Pool(Launcher):
    name = "fake"

    def __init__(self, nodes: list[str]) -> None:
        self.nodes, self.launches = nodes, []  # type: list[str], list[LaunchSpec]

    def pool(self) -> list[str]:
        return list(self.nodes)

    def launch(self, spec: LaunchSpec) -> dict[str, Any]:
        self.launches.append(spec)
        raise Launched()

    def poll(self) -> list[LauncherEvent]:
        return []

    def stop(self, grace_s: float = 3.0) -> None:
        pass


def first_launch(tmp: Path, pool: list[str], spares: int,
                 extra: dict[str, Any] | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    from orchestrator.supervisor import Supervisor
    db = tmp / "nodes.db"
    cfg = RunConfig.model_validate(deep_merge(deep_merge(BASE, extra or {}), {
        "cluster": {"spare_nodes": spares}, "health": {"lemon_nodes": True, "lemon_db": str(db)}}))
    launcher = Pool(pool)
    run_dir = tmp / f"run{spares}"
    run_dir.mkdir()
    with Journal(run_dir) as journal:
        sup = Supervisor(cfg, run_dir, launcher, journal)
        sup.preflight = lambda nodes: []  # the node probe passes (the compute check runs for real)
        with pytest.raises(Launched):
            sup.run()
    return launcher.launches[0].nodes, list(read_journal(run_dir))


def test_hardware_node_is_kept_out_then_readmitted_after_burn_in(tmp_path: Path) -> None:
    store = LemonNodeStore(tmp_path / "nodes.db")
    store.record_hardware("node1", "sdc", 1.0, "replay: the bad step reproduced only here")
    nodes, journal = first_launch(tmp_path, ["node0", "node1", "node2"], spares=1)
    assert nodes == ["node0", "node2"]
    assert [r["node"] for r in journal if r["event"] == "node_excluded"] == ["node1"]
    assert store.nodes_to_exclude(2e12) == ["node1"]  # a spare was there: no burn-in, still a lemon
    nodes, journal = first_launch(tmp_path, ["node0", "node1"], spares=0)
    (burn,) = [r for r in journal if r["event"] == "burn_in"]
    assert burn["node"] == "node1" and burn["verdict"] == "ok"
    assert [r["node"] for r in journal if r["event"] == "node_readmitted"] == ["node1"]
    assert nodes == ["node0", "node1"] and store.nodes_to_exclude(2e12) == []
