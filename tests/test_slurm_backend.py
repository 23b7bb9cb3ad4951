"""The Slurm backend end to end on the real local cluster: clean run, a killed slurmd, a time-limit
warning, a supervisor crash and resume, chaos faults. Each run goes through ``orchestrator submit``.

In CI (CI=true) a cluster that is not up fails these tests; elsewhere the fixture starts it (root).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import RunResult, deep_merge, run_submit
from tests.test_slurm_cluster import SCRIPT, cluster, wait_for  # noqa: F401  (fixture)
from slurm import cmd

pytestmark = pytest.mark.slurm

# the per-attempt sbatch path (these tests are about its jobs); tests/test_slurm_inalloc.py covers in_allocation
SLURM = {"cluster": {"backend": "slurm", "slurm": {"partition": "main", "poll_interval_s": 0.5,
                                                  "recovery": "resubmit"}},
         "train": {"steps": 40}, "health": {"startup_timeout_s": 240}}  # 2 shared cores: slow start-up


def slurm_overrides(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return deep_merge(SLURM, extra or {})


def step_of(run_dir: Path) -> int:
    try:
        return int(json.loads((run_dir / "status.json").read_text()).get("step") or 0)
    except (OSError, ValueError):
        return 0


def launches(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "journal.jsonl"
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["event"] == "launch"]


def when_step(run_dir: Path, step: int, action: Callable[[dict[str, Any]], None]) -> threading.Thread:
    """Run ``action(latest launch record)`` from a thread once the run has applied ``step`` steps."""
    def body() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and step_of(run_dir) < step:
            time.sleep(0.2)
        action(launches(run_dir)[-1])
    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t


def assert_no_overlap(job_ids: list[str]) -> None:
    """Every journaled job is in sacct, and each ended before the next one started: one live job."""
    recs = [cmd.sacct_job(j) for j in job_ids]
    assert all(r is not None for r in recs), job_ids
    for prev, nxt in zip(recs, recs[1:]):
        assert prev.end is not None and nxt.start is not None and prev.end <= nxt.start, (prev, nxt)


def test_clean_two_node_run(cluster: None, tmp_path: Path) -> None:
    r = run_submit(tmp_path, slurm_overrides())
    assert r.code == 0, r.status.get("reason")
    (launch,) = r.events("launch")
    assert len(launch["nodes"]) == 2
    rec = cmd.sacct_job(launch["job_id"])
    assert rec is not None and rec.state == "COMPLETED" and sorted(rec.nodes) == sorted(launch["nodes"])
    assert (r.run_dir / "logs" / "attempt-0" / f"{launch['nodes'][0]}-rank0.log").exists()


def test_killed_node_is_excluded_and_run_completes(cluster: None, tmp_path: Path,
                                                   clean_run: RunResult) -> None:
    run_dir = tmp_path / "run"
    killed: list[str] = []

    def kill(launch: dict[str, Any]) -> None:
        killed.append(launch["nodes"][-1])
        subprocess.run([str(SCRIPT), "kill-node", killed[0]], check=True, capture_output=True, timeout=60)
    t = when_step(run_dir, 15, kill)
    try:
        r = run_submit(tmp_path, slurm_overrides({"train": {"steps": 60}}))
    finally:
        t.join(timeout=5)
        for node in killed:
            subprocess.run([str(SCRIPT), "revive-node", node], capture_output=True, timeout=120)
    assert killed and r.code == 0, r.status.get("reason")
    later = r.events("launch")[1:]
    assert later and all(killed[0] not in l["nodes"] and killed[0] in l["excluded"] for l in later)
    assert abs(r.final_eval - clean_run.final_eval) < 0.08, (r.final_eval, clean_run.final_eval)
    # Attribution needs the supervisor to confirm a hang with SlurmLauncher.lost_nodes (see report).
    assert killed[0] in r.status["excluded_nodes"]
    assert any(f["kind"] == "node_failure" and f["node"] == killed[0] for f in r.events("fault"))


def test_time_limit_warning_checkpoints_and_requeues(cluster: None, tmp_path: Path) -> None:
    """USR2 to the job's steps (what --signal=USR2@N sends before the limit): exit 75, resubmit."""
    run_dir = tmp_path / "run"
    t = when_step(run_dir, 12, lambda launch: cmd.scancel(launch["job_id"], "USR2"))
    r = run_submit(tmp_path, slurm_overrides())
    t.join(timeout=5)
    assert r.code == 0, r.status.get("reason")
    assert len(r.events("launch")) == 2
    assert any(c["step"] >= 12 for c in r.events("checkpoint"))
    # Needs the supervisor's "requeued" handling (see the report): a requeue is not a failure.
    assert [a["action"] for a in r.events("action")] == ["requeue"]


def test_resume_after_supervisor_crash_does_not_double_submit(cluster: None, tmp_path: Path) -> None:
    from orchestrator.cli import main
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(deep_merge(__import__("tests.conftest").conftest.BASE, slurm_overrides())))
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "submit", str(cfg), "--run-dir",
                             str(run_dir), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for("step 12", lambda: True if step_of(run_dir) >= 12 else None, timeout=240)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    first = launches(run_dir)
    assert len(first) == 1
    assert main(["resume", str(run_dir), "--quiet"]) == 0
    r = RunResult(run_dir, 0)
    jobs = [l["job_id"] for l in r.events("launch")]
    assert len(jobs) == len(set(jobs))  # no job id launched twice
    if r.events("reattached"):  # the job outlived its supervisor: watched again, nothing resubmitted
        assert len(jobs) == 1 and r.events("reattached")[0]["attempt"] == first[0]["attempt"]
    else:  # it could not be heard again: stopped, then exactly one more job
        assert len(jobs) == 2
        assert_no_overlap(jobs)
    assert r.events("complete")


def test_chaos_rank_crash_and_nan_recover(cluster: None, tmp_path: Path) -> None:
    chaos = [{"fault": "nan", "step": 8, "rank": 1}, {"fault": "rank_crash", "step": 18, "rank": 3}]
    r = run_submit(tmp_path, slurm_overrides({"chaos": chaos}))
    assert r.code == 0, r.status.get("reason")
    actions = [(a["kind"], a["action"]) for a in r.events("action")]
    assert ("transient_fault", "apply_clean") in actions, actions  # policy.replay: the NaN replays clean
    assert any(a == "relaunch" for _, a in actions), actions
    assert len(r.events("launch")) == 2
    assert_no_overlap([l["job_id"] for l in r.events("launch")])
    assert os.path.exists(r.run_dir / "chaos" / "fired-1")
