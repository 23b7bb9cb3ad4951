"""Preemption on the real local Slurm cluster (issue #13): a job in the ``urgent`` partition (higher
PriorityTier, ``--exclusive`` on every node) preempts the run's job in ``main`` (PreemptMode=REQUEUE,
GraceTime: SIGTERM now, SIGKILL later). The ranks checkpoint on SIGTERM at one agreed step and exit 75.

One run per recovery path and requeue setting (three runs):
- in_allocation with ``requeue_on_preemption: true``: Slurm requeues the allocation (same job id); its
  new agents dial back and the same attempt is relaunched into them;
- resubmit with ``requeue_on_preemption: true``: the requeued job's ranks run the same attempt again;
- resubmit with ``requeue_on_preemption: false``: the job is ``--no-requeue``, the preemption ends it and
  the orchestrator submits a new one.
Either way: the run completes, no restart budget is spent, nothing is excluded, every step is applied
once, no stale-epoch checkpoint is loaded, and no job of the run (or the test) is left in the queue.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from slurm import cmd
from slurm.launcher import ACTIVE_STATES
from tests.conftest import RunResult, run_submit
from tests.test_slurm_cluster import cluster  # noqa: F401  (fixture)
from tests.test_slurm_inalloc import _step

RUN = {"cluster": {"backend": "slurm", "spare_nodes": 0,
                   "slurm": {"partition": "main", "poll_interval_s": 0.5}},
       "train": {"steps": 40, "step_sleep_s": 0.2},
       "health": {"startup_timeout_s": 240, "agent_timeout_s": 3.0},
       "checkpoint": {"every_steps": 40}}  # step 0, the preemption's and the last


def _preempt(run_dir: Path, at_step: int, done: dict[str, Any]) -> None:
    """Once the run reaches ``at_step``: an urgent job that needs every node, exclusively."""
    deadline = time.monotonic() + 400
    while _step(run_dir) < at_step and time.monotonic() < deadline:
        time.sleep(0.2)
    done["t"] = time.time()
    out = subprocess.run(["sbatch", "--parsable", "-p", "urgent", "-N4", "--exclusive", "-J", "urgent-test",
                          "-o", "/dev/null", "--wrap", "sleep 4"], capture_output=True, text=True, timeout=30)
    done["urgent"] = out.stdout.strip().split(";")[0]


def _run(tmp_path: Path, recovery: str, requeue: bool) -> tuple[RunResult, dict[str, Any]]:
    done: dict[str, Any] = {}
    t = threading.Thread(target=_preempt, args=(tmp_path / "run", 12, done), daemon=True)
    t.start()
    slurm = {**RUN["cluster"]["slurm"], "recovery": recovery, "requeue_on_preemption": requeue}
    r = run_submit(tmp_path, {**RUN, "cluster": {**RUN["cluster"], "slurm": slurm}})
    t.join(timeout=5)
    return r, done


def _check(r: RunResult, done: dict[str, Any]) -> None:
    """What must hold after a preemption, whichever path."""
    assert r.code == 0, r.status.get("reason")
    assert done.get("urgent"), done
    urgent = cmd.sacct_job(done["urgent"])
    assert urgent is not None and urgent.state == "COMPLETED", urgent  # it did get the nodes
    faults = [(f["kind"], f["node"]) for f in r.status["faults"]]
    assert faults == [("preempted", None)], faults
    assert r.status["restarts"] == 0 and r.status["excluded_nodes"] == []
    rows = [json.loads(line) for line in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows if not row["skipped"]]
    assert Counter(steps) == Counter(range(r.status["total_steps"])), sorted(Counter(steps).items())
    assert r.status.get("stale_epoch_rejected", 0) == len(r.events("stale_epoch_rejected"))
    fences = [f for f in r.events("fence") if f["epoch"] > 0]
    for loaded in r.events("checkpoint_loaded"):  # only what was committed before a later epoch's fence
        if fences and loaded.get("tier", "storage") == "storage":
            assert any(f"step_{int(loaded['step']):08d}" in f["accepted"] for f in fences), (loaded, fences)
    assert any(12 <= int(c["step"]) < 40 for c in r.events("checkpoint")), r.events("checkpoint")  # on SIGTERM
    ids = {str(x["job_id"]) for x in r.events("launch")} | {str(x["job_id"]) for x in r.events("requeued_same_job")}
    for job_id in ids:  # every job the journal names is accounted for: ended, out of the queue
        entry = cmd.squeue_job(job_id)
        assert entry is None or entry.state not in ACTIVE_STATES | {"COMPLETING"}, entry
        rec = cmd.sacct_job(job_id)
        assert rec is not None and rec.terminal, rec


@pytest.mark.slurm
def test_preempted_allocation_is_requeued_as_the_same_attempt(cluster: None, tmp_path: Path) -> None:
    r, done = _run(tmp_path, "in_allocation", requeue=True)
    _check(r, done)
    launches, again = r.events("launch"), r.events("requeued_same_job")
    assert len(launches) == 1 and len(again) == 1, (launches, again)
    assert again[0]["job_id"] == launches[0]["job_id"] and again[0]["attempt"] == launches[0]["attempt"]
    assert [f["epoch"] for f in r.events("fence")] == [0]  # the same attempt: no new epoch
    assert r.status["actions"].get("requeue") == 1


@pytest.mark.slurm
def test_preempted_job_without_requeue_gets_a_new_one(cluster: None, tmp_path: Path) -> None:
    r, done = _run(tmp_path, "resubmit", requeue=False)
    _check(r, done)
    launches = r.events("launch")
    assert len(launches) == 2 and launches[0]["job_id"] != launches[1]["job_id"], launches
    first = cmd.sacct_job(str(launches[0]["job_id"]))
    assert first is not None and first.state in ("PREEMPTED", "CANCELLED", "FAILED", "COMPLETED"), first
    assert r.status["actions"].get("requeue") == 1 and not r.events("requeued_same_job")
    assert "warning" not in r.status["faults"][0]["detail"], r.status["faults"]  # SIGTERM, not the time limit


@pytest.mark.slurm
def test_preempted_job_is_requeued_as_the_same_attempt(cluster: None, tmp_path: Path) -> None:
    r, done = _run(tmp_path, "resubmit", requeue=True)
    _check(r, done)
    launches, again = r.events("launch"), r.events("requeued_same_job")
    assert len(launches) == 1 and len(again) == 1 and again[0]["job_id"] == launches[0]["job_id"], (launches, again)
    assert [f["epoch"] for f in r.events("fence")] == [0]
    job = cmd.scontrol_job(str(launches[0]["job_id"]))
    assert job is None or job.get("Restarts") == "1", job  # Slurm's own count (None: already forgotten)
