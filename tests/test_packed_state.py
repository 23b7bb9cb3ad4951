"""A storage restore reads the optimizer's scalars as one packed object, not one DCP item each, and
restores exactly what was saved; a checkpoint in the old item-per-scalar format still loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from spec.config import RunConfig
from trainer import checkpoint as ckpt
from trainer.engine import Engine

CFG = RunConfig.model_validate({
    "name": "packed", "cluster": {"backend": "local", "nodes": 1, "ranks_per_node": 1},
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "seq_len": 16},
    "train": {"steps": 4, "global_batch": 2, "lr": 0.01}})


def _trained_engine(steps: int) -> Engine:
    """An engine whose optimizer moved (Adam moments, step counters and lr differ from a fresh one)."""
    eng = Engine(CFG, 0, 1, torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    for i in range(steps):
        x = torch.randint(0, CFG.model.vocab_size, (2, 16), generator=gen)
        eng.forward_backward(x, x)
        eng.apply(0.01 / (i + 1))
    return eng


def _flat(state: dict[str, Any]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, items in state.items() for k, v in items.items()}


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        if isinstance(fa[k], torch.Tensor):
            assert torch.equal(fa[k], fb[k]), k
        else:
            assert fa[k] == fb[k], k


@pytest.fixture
def count_loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = torch.load

    def counting(*a: Any, **k: Any) -> Any:
        calls[0] += 1
        return real(*a, **k)
    monkeypatch.setattr(torch, "load", counting)
    return calls


def test_restore_reads_scalars_once_and_restores_them_exactly(tmp_path: Path, count_loads: list[int]) -> None:
    saved = _trained_engine(3).state_dict()
    ckpt.save(tmp_path, 3, saved, {"step": 3}, rank=0)
    fresh = Engine(CFG, 0, 1, torch.device("cpu"))
    state = fresh.state_dict()
    tensors = sum(1 for v in _flat(state).values() if isinstance(v, torch.Tensor) and v.dim() > 0)
    count_loads[0] = 0
    ckpt.load(ckpt.CheckpointRef(3, ckpt.step_dir(tmp_path, 3)), state, rank=0)
    # one read per tensor, one packed object, the RNG file; the old format read ~14 more per parameter
    assert count_loads[0] <= tensors + 2, (count_loads[0], tensors)
    fresh.load_state_dict(state)
    _assert_same(fresh.state_dict(), saved)


def test_checkpoint_in_the_old_format_still_loads(tmp_path: Path) -> None:
    saved = _trained_engine(2).state_dict()
    path = ckpt.step_dir(tmp_path, 2)
    dcp.save(saved, checkpoint_id=str(path), no_dist=True)  # item per scalar, as before packed_state
    (path / ckpt.EXTRA).write_text('{"step": 2}')
    fresh = Engine(CFG, 0, 1, torch.device("cpu"))
    state = fresh.state_dict()
    assert ckpt.load(ckpt.CheckpointRef(2, path), state, rank=0)["step"] == 2
    fresh.load_state_dict(state)
    _assert_same(fresh.state_dict(), saved)
