"""A storage restore reads the optimizer's scalars as one packed object, not one DCP item each, reads
every shard file once and decodes its tensors without ``torch.load``, and restores exactly what was saved;
a checkpoint in the old item-per-scalar format still loads the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import io
import os
import pickle

import pytest
import torch
import torch.distributed.checkpoint as dcp

from spec.config import RunConfig
from trainer import checkpoint as ckpt
from trainer import dcp_reader
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
    count_loads[0] = 0
    ckpt.load(ckpt.CheckpointRef(3, ckpt.step_dir(tmp_path, 3)), state, rank=0)
    # the packed scalars' object and the RNG file; DCP's own reader added one per tensor (and the format
    # before packed scalars ~14 per parameter)
    assert count_loads[0] <= 2, count_loads[0]
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

    reader = dcp_reader.OnePassReader(str(path))  # the same load, counted: each file once, no torch.load
    dcp.load(fresh.state_dict(), storage_reader=reader, no_dist=True)
    assert reader.files_read == len(list(path.glob("*.distcp"))) and reader.general_loads == 0


class _Boom:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("true",))


@pytest.mark.parametrize("payload", [{"a": torch.ones(2)}, _Boom()], ids=["not-a-tensor", "foreign-global"])
def test_an_item_that_is_not_a_plain_tensor_is_refused_by_the_fast_decoder(payload: Any) -> None:
    buf = io.BytesIO()
    if isinstance(payload, _Boom):
        torch.save(torch.ones(2), buf)  # a valid archive, its pickle swapped for one that calls os.system
        buf = io.BytesIO(_swap_pickle(buf.getvalue(), pickle.dumps(payload, protocol=2)))
    else:
        torch.save(payload, buf)
    with pytest.raises(dcp_reader.NotPlainTensor):
        dcp_reader.decode_tensor(buf.getvalue())


def _swap_pickle(archive: bytes, pkl: bytes) -> bytes:
    import zipfile
    src, out = zipfile.ZipFile(io.BytesIO(archive)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, pkl if name.endswith("/data.pkl") else src.read(name))
    return out.getvalue()
