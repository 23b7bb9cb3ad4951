"""The race behind the flaky resume test (issue #13), made deterministic: after the supervisor was
SIGKILLed, ``resume`` re-attaches to the job, but the ranks finished (and sent ``done``) before the new
supervisor bound the telemetry port, so the job simply ends. That used to read as a ``rank_crash`` at
step 0 with no rank and no node, and a new job was submitted. Every rank's exit marker (code 0) and the
committed final checkpoint are the same fact as ``done``: the run completes without a new job.

Only the outermost boundary is faked: a launcher that re-attaches and reports the end Slurm reported.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from spec.config import RunConfig
from orchestrator.journal import Journal
from orchestrator.launcher.base import LaunchSpec, Launcher, LauncherEvent
from orchestrator.launcher.base import free_port
from tests.conftest import BASE, deep_merge


class FinishedJob(Launcher):
    """A re-attached job whose ranks all exited while nobody listened."""

    name = "finished"

    def __init__(self, world: int, codes: dict[int, int]) -> None:
        self.world, self.codes, self.polled, self.launched = world, codes, False, 0

    def pool(self) -> list[str]:
        return ["node0", "node1", "node2"]

    def launch(self, spec: LaunchSpec) -> dict[str, Any]:
        self.launched += 1
        raise RuntimeError("a new job must not be submitted")

    def poll(self) -> list[LauncherEvent]:
        if self.polled:
            return []
        self.polled = True
        return [LauncherEvent("job_ended", state="COMPLETED", t=time.time())]

    def stop(self, grace_s: float = 3.0) -> None:
        pass

    def attach(self, info: dict[str, Any], spec: LaunchSpec) -> bool:
        return True

    def exit_codes(self) -> dict[int, int]:
        return dict(self.codes)


def resume_into(tmp_path: Path, launcher: FinishedJob) -> tuple[int, list[str]]:
    from orchestrator.journal import read_journal
    from orchestrator.supervisor import Supervisor
    cfg = RunConfig.model_validate(deep_merge(BASE, {"train": {"steps": 20}}))
    final = tmp_path / "checkpoints" / "step_00000020"
    final.mkdir(parents=True)
    (final / "COMMITTED").write_text("20\n")
    launch = {"event": "launch", "attempt": 0, "nodes": ["node0", "node1"], "job_id": "20",
              "telemetry": f"127.0.0.1:{free_port()}", "resume_step": None}
    with Journal(tmp_path) as journal:
        journal.append("checkpoint", step=20, path=str(final), save_s=0.1)
        sup = Supervisor(cfg, tmp_path, launcher, journal)
        sup.restore([launch, {"event": "checkpoint", "step": 20}])
        code = sup.run()
    return code, [r["event"] for r in read_journal(tmp_path)]


def test_reattached_job_that_finished_unheard_completes(tmp_path: Path) -> None:
    launcher = FinishedJob(4, {r: 0 for r in range(4)})
    code, events = resume_into(tmp_path, launcher)
    assert code == 0 and launcher.launched == 0
    assert "done_from_evidence" in events and "fault" not in events and events[-1] == "state"


def test_reattached_job_with_a_failed_rank_is_not_completed(tmp_path: Path) -> None:
    """One rank exited 1: not a completion; the supervisor recovers (here: it tries to relaunch)."""
    from orchestrator.journal import read_journal
    launcher = FinishedJob(4, {0: 0, 1: 0, 2: 1, 3: 0})
    with pytest.raises(RuntimeError, match="must not be submitted"):
        resume_into(tmp_path, launcher)
    events = [r["event"] for r in read_journal(tmp_path)]
    assert "done_from_evidence" not in events and "fault" in events and launcher.launched == 1
