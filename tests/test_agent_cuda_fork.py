"""A warm node agent must never initialise CUDA: it forks its ranks, and a child of a process that
initialised CUDA dies with "Cannot re-initialize CUDA in forked subprocess" at its first GPU call.

That is what happened on the first run on a real GPU (an H200): DCP's default writer, in the agent's
warm-up save, copies ahead on the current CUDA stream whenever a GPU is present, even for CPU tensors.
On a CPU machine the same path is never taken, so the test makes torch report a GPU and turns CUDA's
initialisation into a recorded error: the agent's whole warm-up must not reach it.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import BASE


@pytest.fixture
def gpu_present(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """torch sees a GPU; initialising CUDA (``torch.cuda._lazy_init``) records where from and raises."""
    inits: list[str] = []

    def lazy_init() -> None:
        inits.append("".join(traceback.format_stack(limit=8)[:-1]))
        raise RuntimeError("the agent initialised CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "_lazy_init", lazy_init)
    return inits


def test_the_agents_warm_up_never_initialises_cuda_where_a_gpu_is_present(tmp_path: Path,
                                                                           gpu_present: list[str]) -> None:
    from orchestrator.launcher.node_agent import warm_up
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(BASE))
    cfg = warm_up(tmp_path)
    assert cfg.model.d_model == BASE["model"]["d_model"]
    assert not gpu_present, gpu_present[0]


def test_dcps_default_writer_would_have(tmp_path: Path, gpu_present: list[str]) -> None:
    """The check bites: a plain ``dcp.save`` of a CPU state reaches CUDA's initialisation here."""
    import torch.distributed.checkpoint as dcp
    with pytest.raises(BaseException):  # DCP wraps it in CheckpointException, a BaseException
        dcp.save({"w": torch.ones(4)}, checkpoint_id=str(tmp_path / "c"), no_dist=True)
    assert gpu_present and "current_stream" in gpu_present[0]


def test_ranks_of_a_cuda_run_start_as_fresh_interpreters_and_recover(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """What a GPU node does (forced here with ORCH_RANK_START=exec on the CPU): every rank, also the one
    relaunched after a crash, is exec'd by its agent, and the run completes as a forked one does."""
    from orchestrator.launcher.node_agent import RANK_START_ENV, fresh_interpreter_for_ranks
    from tests.conftest import run_submit
    assert not fresh_interpreter_for_ranks("cpu") and fresh_interpreter_for_ranks("cuda")
    monkeypatch.setenv(RANK_START_ENV, "exec")
    r = run_submit(tmp_path, {"cluster": {"nodes": 2, "ranks_per_node": 1, "spare_nodes": 0},
                              "train": {"steps": 16}, "checkpoint": {"every_steps": 5},
                              "chaos": [{"fault": "rank_crash", "step": 8, "rank": 1}]})
    assert r.code == 0, r.status.get("reason")
    assert ("rank_crash", "relaunch") in {(f["kind"], f["action"]) for f in r.status["faults"]}
    logs = sorted(r.run_dir.glob("logs/attempt-*/*-rank*.log"))
    fresh = [p for p in logs if "started as a fresh interpreter" in p.read_text(errors="replace")]
    assert len({p.parent.name for p in fresh}) >= 2 and fresh == logs, logs
