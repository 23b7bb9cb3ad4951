"""The GPU path end to end, on the local backend: a 1-rank NCCL run through a NaN, a rank crash and a
checkpoint restore; 2 ranks sharing one GPU over gloo with CUDA tensors (device-placement bugs that one
rank hides: DDP buckets, the step's agreement, checkpoints). Skipped where torch sees no GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import RunResult, run_submit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available())")

ONE_GPU = {"cluster": {"nodes": 1, "ranks_per_node": 1, "spare_nodes": 0, "device": "cuda"},
           "train": {"steps": 40, "precision": "bf16"}, "checkpoint": {"every_steps": 10, "async_save": True}}


def rank_lines(r: RunResult) -> list[str]:
    """The 'rank R on NODE: device D, backend B' line of every rank of every attempt."""
    return [line for log in sorted(r.run_dir.glob("logs/attempt-*/*-rank*.log"))
            for line in log.read_text(errors="replace").splitlines() if ": device " in line]


def test_one_rank_nccl_survives_nan_crash_and_restores(tmp_path: Path) -> None:
    r = run_submit(tmp_path, {**ONE_GPU, "chaos": [{"fault": "nan", "step": 5, "rank": 0},
                                                   {"fault": "rank_crash", "step": 25, "rank": 0}]})
    assert r.code == 0, r.status.get("reason")
    kinds = {(f["kind"], f["action"]) for f in r.status["faults"]}
    assert {("transient_fault", "apply_clean"), ("rank_crash", "relaunch")} <= kinds, kinds  # replayed clean
    assert r.events("checkpoint_loaded") or any(e.get("resume_step") for e in r.events("launch"))
    assert rank_lines(r) and all("device cuda:0, backend nccl" in line for line in rank_lines(r))


def test_two_ranks_share_one_gpu_over_gloo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_DIST_BACKEND", "gloo")  # NCCL refuses two ranks on one GPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # one GPU even on a bigger machine
    cfg = {**ONE_GPU, "cluster": {"nodes": 2, "ranks_per_node": 1, "spare_nodes": 0, "device": "cuda"},
           "chaos": [{"fault": "nan", "step": 7, "rank": 1}]}
    r = run_submit(tmp_path, cfg)
    assert r.code == 0, r.status.get("reason")
    assert ("transient_fault", "apply_clean") in {(f["kind"], f["action"]) for f in r.status["faults"]}
    lines = rank_lines(r)
    assert len(lines) == 2 and all("device cuda:0, backend gloo" in line for line in lines), lines


def test_collective_probe_over_nccl_on_cuda_buffers() -> None:
    """One rank per GPU (at most 2): the probe's worker sets its device and times synchronised ops."""
    from health.probes.collective import run_collective_probe
    world = min(torch.cuda.device_count(), 2)
    results = run_collective_probe(world, {r: "gpu-node" for r in range(world)}, 90.0, backend="nccl")
    assert [r.verdict for r in results] == ["ok"], [r.evidence for r in results]
    assert results[0].evidence["allreduce_ms"] > 0
