"""Faults during checkpoints and a supervisor killed with SIGKILL, on the local cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.conftest import BASE, RunResult, deep_merge, run_submit


def test_crash_during_checkpoint_save_never_counts(tmp_path: Path) -> None:
    # the storage tier alone (the memory tier would resume from step 29 or 30 and hide the check)
    r = run_submit(tmp_path, {"chaos": [{"fault": "ckpt_crash", "step": 30, "rank": 1}],
                              "checkpoint": {"memory": {"enabled": False}}})
    assert r.code == 0, r.status["reason"]
    f = [f for f in r.status["faults"] if f["kind"] == "rank_crash"]
    assert f and f[0]["action"] == "relaunch"
    assert r.events("launch")[-1]["resume_step"] == 20  # the half-written step-30 checkpoint was ignored


def test_disk_full_is_reported_and_run_continues(tmp_path: Path) -> None:
    r = run_submit(tmp_path, {"chaos": [{"fault": "disk_full", "step": 30, "rank": 0}]})
    assert r.code == 0
    assert ("disk_full", "alert") in [(f["kind"], f["action"]) for f in r.status["faults"]]
    assert 30 not in [e["step"] for e in r.events("checkpoint")]


def _status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def test_supervisor_sigkill_then_resume_completes(tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(deep_merge(BASE, {"train": {"step_sleep_s": 0.05}})))
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "orchestrator.cli"]
    sup = subprocess.Popen(cmd + ["submit", str(cfg), "--run-dir", str(run_dir), "--quiet"])
    deadline = time.monotonic() + 180
    while _status(run_dir).get("step", 0) < 25 and time.monotonic() < deadline and sup.poll() is None:
        time.sleep(0.1)
    os.kill(sup.pid, signal.SIGKILL)
    sup.wait()
    # the agents notice the closed pipe and take their ranks down: nothing trains twice
    out = subprocess.run(cmd + ["resume", str(run_dir), "--quiet"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r = RunResult(run_dir, 0)
    assert r.status["state"] == "COMPLETED" and r.status["step"] == 60
    assert len(r.events("resume")) == 1
    launches = r.events("launch")
    assert launches[-1]["resume_step"] is not None and launches[-1]["resume_step"] >= 20
    losses = r.losses()
    assert sorted(losses) == list(range(60))


def test_lemon_node_is_kept_out_of_the_next_run(tmp_path: Path) -> None:
    """Three crashes on node1 across runs: the fourth run starts on node0 + the spare."""
    from health.detectors.lemon import LemonNodeStore
    import time as _t
    db = tmp_path / "nodes.db"
    store = LemonNodeStore(db)
    for i in range(3):
        store.record_fault("node1", "gpu_error", _t.time() - i)
    r = run_submit(tmp_path, {"health": {"lemon_nodes": True, "lemon_db": str(db)}, "train": {"steps": 20},
                              "checkpoint": {"every_steps": 10}})
    assert r.code == 0
    assert r.events("launch")[0]["nodes"] == ["node0", "node2"]
    assert any(e["node"] == "node1" and "lemon" in e["reason"] for e in r.events("node_excluded"))


def test_shrink_on_node_loss_continues_with_fewer_nodes(tmp_path: Path, clean_run: RunResult) -> None:
    """No spare left: with policy.shrink_on_node_loss the run goes on at dp=2 with the same global batch,
    resharded from the memory tier (DDP: each surviving rank's copy holds the whole state; hybrid layouts:
    tests/test_parallel_chaos.py)."""
    r = run_submit(tmp_path, {"cluster": {"spare_nodes": 0}, "policy": {"shrink_on_node_loss": True},
                              "health": {"hang_timeout_s": 6.0}, "checkpoint": {"memory": {"enabled": True}},
                              "chaos": [{"fault": "node_failure", "step": 25, "node": 1}]})
    assert r.code == 0, r.status["reason"]
    assert r.events("shrink") and r.events("launch")[-1]["nodes"] == ["node0"]
    load = next(e for e in r.events("checkpoint_loaded") if e["seq"] > r.events("shrink")[0]["seq"])
    assert load["tier"] == "memory" and load["from_world"] == 4 and 24 <= load["step"] <= 25, load
    assert abs(r.final_eval - clean_run.final_eval) < 0.08
    assert sorted(r.losses()) == list(range(60))
