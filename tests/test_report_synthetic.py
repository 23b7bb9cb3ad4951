"""A synthetic run directory (docs/RUNDIR.md) with every kind of event, and tests of its loader.

``make_run_dir`` is shared by the other test_report_* modules. The story: 4 nodes, 120 steps;
a NaN at step 25 (skipped), node2 straggles over steps 40-70, a loss spike at 60 rolls back to the
checkpoint at 40, a rank crash at 90 relaunches attempt 1 from step 80.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.journal import Journal
from orchestrator.report.rundir import load_metrics, load_run
from orchestrator.snapshot import FaultRecord, LostTime, RunSnapshot, write_status

T0 = 1_700_000_000.0
NODES = ["node0", "node1", "node2", "node3"]


def loss_at(step: int, offset: float = 0.0) -> float:
    return 5.0 * math.exp(-step / 50) + 1.5 + offset


class _Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def _step_line(step: int, attempt: int, clock: _Clock, rng: np.random.Generator, offset: float,
               spike: bool = False) -> dict[str, Any]:
    """One metrics.jsonl line; the clock advances by the slowest node's step time (plus overhead)."""
    node_times = {n: 0.1 + 0.01 * rng.random() for n in NODES}
    if 40 <= step <= 70 and attempt == 0:
        node_times["node2"] *= 3
    loss = math.nan if step == 25 else loss_at(step, offset) + 0.02 * rng.standard_normal()
    if spike:
        loss *= 4
    clock.t += max(node_times.values()) + 0.01
    return {"step": step, "attempt": attempt, "t": clock.t, "loss": loss, "grad_norm": 1.0 + rng.random(),
            "lr": 1e-3, "tokens_per_s": 5000.0, "step_time": max(node_times.values()),
            "skipped": step == 25, "node_step_time": node_times}


def make_run_dir(root: Path, name: str = "synth", offset: float = 0.0, seed: int = 0) -> Path:
    """Write journal.jsonl, metrics.jsonl and status.json of the synthetic run under root/name."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    clock = _Clock()
    lines: list[str] = []
    with Journal(run_dir, clock=clock) as j:
        j.append("run_start", name=name, total_steps=120, world_size=8, backend="local")
        j.append("launch", attempt=0, nodes=NODES, rank_map={}, resume_step=0)
        plan = list(range(1, 61)) + list(range(41, 91))  # the rollback at 60 recomputes 41..60
        for i, step in enumerate(plan):
            lines.append(json.dumps(_step_line(step, 0, clock, rng, offset, spike=(step == 60 and i < 60))))
            _journal_step(j, step, i < 60 or step > 60)  # first time this step runs
        clock.t += 5.0
        j.append("launch", attempt=1, nodes=NODES, rank_map={}, resume_step=80)
        for step in range(81, 121):
            lines.append(json.dumps(_step_line(step, 1, clock, rng, offset)))
            if step % 20 == 0:
                j.append("eval", step=step, eval_loss=loss_at(step, offset) + 0.1)
        j.append("complete", step=120, eval_loss=loss_at(120, offset) + 0.1, goodput=0.8, wall_s=clock.t - T0)
    lines.insert(10, '{"step": 3, "attempt": 0, "torn')  # a crash mid-write: skipped on read
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    write_status(run_dir, _status(name, clock.t))
    return run_dir


def _journal_step(j: Journal, step: int, first_pass: bool) -> None:
    if step == 25:
        j.append("fault", kind="nan", step=25, rank=1, node=0, detected_after_s=0.0, evidence="loss=nan")
        j.append("action", action="skip_step", kind="nan", step=25, rank=1, node=0, lost_steps=0,
                 lost_s=0.1, detail="skipped batch")
    if step == 48 and first_pass:
        j.append("fault", kind="straggler", step=48, rank=5, node=2, detected_after_s=1.0,
                 evidence={"factor": 3.0})
        j.append("action", action="alert", kind="straggler", step=48, rank=5, node=2, lost_steps=0,
                 lost_s=0.0, detail="node2 3x slower <b>")
    if step == 60 and first_pass:
        j.append("fault", kind="loss_spike", step=60, rank=None, node=None, detected_after_s=0.0,
                 evidence="loss 4x median")
        j.append("action", action="rollback", kind="loss_spike", step=60, rank=None, node=None,
                 lost_steps=20, lost_s=2.4, detail="to checkpoint step 40")
    if step in (20, 40, 60, 80) and first_pass:
        j.append("eval", step=step, eval_loss=loss_at(step) + 0.1)
        j.append("checkpoint", step=step, path=f"checkpoints/step_{step:08d}", save_s=0.05)
    if step == 90:
        j.append("fault", kind="rank_crash", step=90, rank=3, node=1, detected_after_s=0.5,
                 evidence="exit code -9")
        j.append("action", action="relaunch", kind="rank_crash", step=90, rank=3, node=1,
                 lost_steps=10, lost_s=6.2, detail="attempt 1 from step 80")


def _status(name: str, t: float) -> RunSnapshot:
    return RunSnapshot(name=name, state="COMPLETED", step=120, total_steps=120, loss=loss_at(120),
                       eval_loss=loss_at(120) + 0.1, goodput=0.72, productive_s=13.0, wall_s=t - T0,
                       lost=LostTime(detection=0.6, restart=5.0, recomputation=3.4, checkpoint=0.2),
                       restarts=1, attempt=1, faults=[FaultRecord("nan", 25, 1, 0, 0.0, "skip_step")],
                       started_t=T0, updated_t=t)


def test_latest_attempt_and_recomputation_win(tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path)
    metrics = load_metrics(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 121))
    by_step = {m["step"]: m for m in metrics}
    assert by_step[85]["attempt"] == 1
    assert by_step[60]["loss"] < 3  # the recomputed step 60, not the spike
    assert by_step[25]["skipped"] is True


def test_load_run(tmp_path: Path) -> None:
    run = load_run(make_run_dir(tmp_path, name="abc"))
    assert run.name == "abc" and run.start_t == T0 and run.status["state"] == "COMPLETED"
    assert [s for s, _ in run.eval_points()] == [20, 40, 60, 80, 100, 120]
    assert len(run.of("fault")) == 4


def test_load_run_rejects_empty_dir(tmp_path: Path) -> None:
    import pytest

    with pytest.raises(FileNotFoundError, match="run directory"):
        load_run(tmp_path)
