"""Blame from evidence, never by position (issue #13): when Slurm ends a job NODE_FAIL and the controller
names no node (not DOWN now, nothing in its event history), the supervisor says "unknown", probes
every node of the allocation and excludes only the node that fails the probe.

Only the outermost boundary is faked: the launcher reports what Slurm would, the probe what srun would.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from spec.config import RunConfig
from orchestrator.journal import Journal, read_journal
from orchestrator.launcher.base import LaunchSpec, Launcher, LauncherEvent
from tests.conftest import BASE, deep_merge


class Stop(Exception):
    """Ends the test at the second launch: the relaunch decision is what is under test."""


class UnnamedNodeFailure(Launcher):
    name = "fake-slurm"

    def __init__(self) -> None:
        self.launches: list[LaunchSpec] = []
        self.events: list[LauncherEvent] = []

    def pool(self) -> list[str]:
        return ["node0", "node1", "node2", "node3"]

    def launch(self, spec: LaunchSpec) -> dict[str, Any]:
        self.launches.append(spec)
        if len(self.launches) > 1:
            raise Stop()
        now = time.time()
        self.events = [LauncherEvent("node_lost", node=None, state="NODE_FAIL", t=now,
                                     detail="job 7 ended NODE_FAIL; the controller names no node",
                                     info={"evidence_source": "none"}),
                       LauncherEvent("job_ended", state="NODE_FAIL", t=now)]
        return {"job_id": "7"}

    def poll(self) -> list[LauncherEvent]:
        out, self.events = self.events, []
        return out

    def stop(self, grace_s: float = 3.0) -> None:
        pass


def test_unknown_blame_probes_and_excludes_only_what_fails(tmp_path: Path) -> None:
    from orchestrator.supervisor import Supervisor
    cfg = RunConfig.model_validate(deep_merge(BASE, {"cluster": {"spare_nodes": 2}}))
    launcher = UnnamedNodeFailure()
    probed: list[list[str]] = []

    def probe(nodes: list[str]) -> list[str]:
        probed.append(list(nodes))
        return [n for n in nodes if n == "node1"] if len(probed) > 1 else []  # pre-flight passes
    with Journal(tmp_path) as journal:
        sup = Supervisor(cfg, tmp_path, launcher, journal)
        sup.preflight = probe
        with pytest.raises(Stop):
            sup.run()
    records = list(read_journal(tmp_path))
    (blame,) = [r for r in records if r["event"] == "blame"]
    assert blame["node"] == "unknown" and blame["nodes"] == ["node0", "node1"]
    (probe_rec,) = [r for r in records if r["event"] == "blame_probe"]
    assert probe_rec["failed"] == ["node1"]
    (excluded,) = [r for r in records if r["event"] == "node_excluded"]
    assert excluded["node"] == "node1" and excluded["evidence"]["probe"] == "failed"
    assert "node1" not in launcher.launches[1].nodes and "node0" in launcher.launches[1].nodes


class CancelledJob(UnnamedNodeFailure):
    """The job is cancelled under a running attempt (Slurm says CANCELLED)."""

    def launch(self, spec: LaunchSpec) -> dict[str, Any]:
        self.launches.append(spec)
        if len(self.launches) > 1:
            raise Stop()
        self.events = [LauncherEvent("job_ended", state="CANCELLED", t=time.time(), detail="job 7 CANCELLED by 0")]
        return {"job_id": "7"}


@pytest.mark.parametrize("ours", [False, True])
def test_cancelled_job_ends_failed_without_relaunch(tmp_path: Path, ours: bool) -> None:
    """An admin's scancel, or `orchestrator cancel` (CANCEL_REQUESTED): FAILED, said which, no relaunch."""
    from orchestrator.supervisor import Supervisor
    cfg = RunConfig.model_validate(BASE)
    if ours:
        (tmp_path / "CANCEL_REQUESTED").write_text("7\n")
    launcher = CancelledJob()
    with Journal(tmp_path) as journal:
        sup = Supervisor(cfg, tmp_path, launcher, journal)
        assert sup.run() == 1
    assert len(launcher.launches) == 1 and sup.excluded == []
    who = "by `orchestrator cancel`" if ours else "outside the orchestrator"
    assert f"cancelled {who}" in sup.snap.reason, sup.snap.reason
