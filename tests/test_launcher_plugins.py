"""Launchers as plugins: ``cluster.backend`` picks a plugin module through the registry, and a rank exit
a backend reports itself (``LauncherEvent`` kind ``rank_exit``) is handled as the rank's own report is.

The launcher in the second test is the outermost boundary faked: it says what a backend would.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from spec.config import BACKEND_PLUGINS, RunConfig
from orchestrator.journal import Journal, read_journal
from orchestrator.launcher.base import LaunchSpec, Launcher, LauncherEvent
from orchestrator.launcher.registry import make_launcher
from tests.conftest import BASE, deep_merge


def test_the_registry_builds_the_configured_backend(tmp_path: Path) -> None:
    from orchestrator.launcher.local.launcher import LocalLauncher
    from slurm.alloc_launcher import SlurmAllocLauncher
    from slurm.launcher import SlurmLauncher
    assert set(BACKEND_PLUGINS) == {"local", "slurm"}
    local = make_launcher(RunConfig.model_validate(BASE), tmp_path)
    try:
        assert isinstance(local, LocalLauncher) and len(local.pool()) == BASE["cluster"]["nodes"] + 1
    finally:
        local.close()
    for recovery, kind in (("resubmit", SlurmLauncher), ("in_allocation", SlurmAllocLauncher)):
        cfg = RunConfig.model_validate(deep_merge(BASE, {"cluster": {"backend": "slurm",
                                                                     "slurm": {"recovery": recovery}}}))
        assert type(make_launcher(cfg, tmp_path)) is kind


class Stop(Exception):
    """Ends the test at the second launch: the relaunch decision is what is under test."""


class ExitReportingBackend(Launcher):
    """A backend that hears its ranks' exits itself and reports one crash."""

    name = "fake-exits"

    def __init__(self) -> None:
        self.launches: list[LaunchSpec] = []
        self.events: list[LauncherEvent] = []

    def pool(self) -> list[str]:
        return ["node0", "node1", "node2"]

    def launch(self, spec: LaunchSpec) -> dict[str, Any]:
        self.launches.append(spec)
        if len(self.launches) > 1:
            raise Stop()
        self.events = [LauncherEvent("rank_exit", rank=3, code=1, t=time.time(), node="node1",
                                     stderr_tail="Traceback ...\nRuntimeError: boom")]
        return {"pids": {}}

    def poll(self) -> list[LauncherEvent]:
        out, self.events = self.events, []
        return out

    def stop(self, grace_s: float = 3.0) -> None:
        pass


def test_a_rank_exit_the_backend_reports_is_a_rank_crash_and_relaunches(tmp_path: Path) -> None:
    from orchestrator.supervisor import Supervisor
    cfg = RunConfig.model_validate(BASE)
    launcher = ExitReportingBackend()
    with Journal(tmp_path) as journal:
        sup = Supervisor(cfg, tmp_path, launcher, journal)
        sup.preflight = lambda nodes: []
        with pytest.raises(Stop):
            sup.run()
    faults = [r for r in read_journal(tmp_path) if r["event"] == "fault"]
    assert [(f["kind"], f["rank"], f["node"]) for f in faults] == [("rank_crash", 3, "node1")]
    assert len(launcher.launches) == 2
