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
