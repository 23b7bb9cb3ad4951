"""Epoch fencing (trainer.fence) on the local backend: the EPOCH record, a rank that sees a newer epoch,
checkpoints committed by a dead epoch, telemetry of an older epoch, and a relaunch end to end."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tests.conftest import RunResult, run_submit
from trainer import checkpoint as ckpt
from trainer.fence import (
    FENCED_EXIT, STALE_PREFIX, EpochGuard, Fenced, advance, epoch_path, read_state,
)
from trainer.loop import TrainLoop


def commit_fake(root: Path, step: int, epoch: int | None) -> Path:
    """A committed checkpoint directory as ``ckpt.save`` leaves it (without the DCP shards)."""
    path = ckpt.step_dir(root, step)
    path.mkdir(parents=True)
    (path / ckpt.EXTRA).write_text(json.dumps({"step": step, "epoch": epoch}))
    ckpt.write_manifest(path)
    (path / ckpt.COMMITTED).write_text(f"{step}\n")
    return path


class Events:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def event(self, kind: str, **fields: Any) -> None:
        self.sent.append((kind, fields))


def test_advance_records_epoch_and_what_was_committed(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    commit_fake(root, 10, 0)
    advance(tmp_path, 0, root, now=1.0)
    assert read_state(tmp_path).epoch == 0  # type: ignore[union-attr]
    commit_fake(root, 20, 0)
    state = advance(tmp_path, 1, root, now=2.0)
    assert state.epoch == 1
    assert state.fence_for(0).accepted == ("step_00000010", "step_00000020")  # type: ignore[union-attr]
    assert advance(tmp_path, 1, root).fences == state.fences  # idempotent
    assert state.admits(0, "step_00000020") and not state.admits(0, "step_00000030")
    assert state.admits(1, "step_00000030") and state.admits(None, "step_00000030")


def test_guard_stops_an_older_epoch_and_costs_a_stat(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    advance(tmp_path, 0, root)
    guard = EpochGuard(tmp_path, 0)
    guard.check()
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        guard.check()
    per_call = (time.perf_counter() - t0) / n
    assert per_call < 1e-3, per_call  # measured 2-5 µs on a quiet core; a step is milliseconds
    advance(tmp_path, 1, root)
    with pytest.raises(Fenced) as exc:
        guard.check()
    assert exc.value.code == FENCED_EXIT and exc.value.current == 1
    EpochGuard(tmp_path, 1).check()  # the new epoch runs


def test_fenced_rank_does_not_commit(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    advance(tmp_path, 0, root)
    guard = EpochGuard(tmp_path, 0)
    state = {"w": torch.zeros(4)}
    ckpt.save(root, 10, state, {"step": 10, "epoch": 0}, 0, fence=guard.check)
    assert (ckpt.step_dir(root, 10) / ckpt.COMMITTED).exists()
    advance(tmp_path, 1, root)
    with pytest.raises(Fenced):
        ckpt.save(root, 20, state, {"step": 20, "epoch": 0}, 0, fence=guard.check)
    assert not ckpt.step_dir(root, 20).exists()
    assert [r.step for r in ckpt.committed(root)] == [10]


def test_checkpoint_committed_after_the_fence_is_never_loaded(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    advance(tmp_path, 0, root)
    commit_fake(root, 10, 0)
    advance(tmp_path, 1, root)  # epoch 0 declared dead: step 10 is accepted
    commit_fake(root, 20, 0)  # a partitioned rank of epoch 0 committed later
    tel = Events()
    loop = SimpleNamespace(guard=EpochGuard(tmp_path, 1), tel=tel)
    ref = ckpt.choose_for_load(root, 0, None, lambda r: TrainLoop._admit(loop, r))  # type: ignore[arg-type]
    assert ref is not None and ref.step == 10
    assert [k for k, _ in tel.sent] == ["stale_checkpoint"] and tel.sent[0][1]["epoch"] == 0
    assert (root / f"{STALE_PREFIX}0-step_00000020").is_dir()  # kept as evidence, out of the namespace
    assert [r.step for r in ckpt.committed(root)] == [10]


def lineage_starts(r: RunResult) -> list[tuple[int, int]]:
    """(attempt, step it started from) per attempt: the checkpoint its ranks loaded (journal order)."""
    out: list[tuple[int, int]] = []
    for e in r.journal:
        if e["event"] in ("launch", "requeued_same_job"):  # Slurm's requeue runs the same attempt again
            out.append((int(e["attempt"]), int(e.get("resume_step") or 0)))
        elif e["event"] == "checkpoint_loaded" and out:
            out[-1] = (out[-1][0], int(e["step"]))
    return out


def applied_once(r: RunResult) -> None:
    """Every step 0..N-1 was applied exactly once in the lineage the final model kept: each attempt's
    steps from the checkpoint it loaded up to the one the next attempt loaded, no step twice. A row of
    a fenced epoch counts only through its ``stale_epoch_rejected`` journal line (rejected, not lost)."""
    rows = [json.loads(line) for line in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
    seen = {(row["attempt"], row["step"]) for row in rows if not row["skipped"] and row["attempt"] is not None}
    seen |= {(e["epoch"], e["step"]) for e in r.events("stale_epoch_rejected") if e["what"] == "step"}
    lineage = lineage_starts(r)
    bounds = [s for _, s in lineage[1:]] + [r.status["total_steps"]]
    kept: list[int] = []
    for (attempt, start), stop in zip(lineage, bounds):
        mine = [row["step"] for row in rows if row["attempt"] == attempt and not row["skipped"]
                and start <= row["step"] < stop]
        assert len(mine) == len(set(mine)), (attempt, mine)
        kept += [step for step in range(start, stop) if (attempt, step) in seen]
    assert sorted(kept) == list(range(r.status["total_steps"])), (lineage, kept)


def test_relaunch_advances_the_epoch(tmp_path: Path) -> None:
    r = run_submit(tmp_path, {"train": {"steps": 30},
                              "chaos": [{"fault": "rank_crash", "step": 14, "rank": 1}]})
    assert r.code == 0, r.status.get("reason")
    assert read_state(r.run_dir).epoch == 1  # type: ignore[union-attr]
    fences = r.events("fence")
    assert [f["epoch"] for f in fences] == [0, 1]
    assert "step_00000010" in fences[1]["accepted"]
    stale = r.events("stale_epoch_rejected")
    assert r.status["stale_epoch_rejected"] >= len(stale)  # heartbeats are counted, journaled once
    assert all(e["epoch"] < e["current"] for e in stale)
    assert epoch_path(r.run_dir).exists()
    applied_once(r)
