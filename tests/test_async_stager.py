"""The async checkpoint's stager survives a torch whose DefaultStager spends itself after one stage.

torch 2.11 (the CUDA build on the GPU machine) closes DefaultStager's inner copier at the end of
every stage (pytorch#183413): every async save after the first failed on an H200 with
``KeyError: <class 'type'>``. torch 2.13, pinned here, keeps it; the 2.11 behaviour is reproduced by
wrapping ``DefaultStager._stage`` the way 2.11 does, so the test runs on this machine's torch.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

from trainer.checkpoint import ReusableStager, background_stager, stager_spent


@pytest.fixture
def spends_after_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    """DefaultStager as in torch 2.11: its inner StateDictStager is closed after each stage."""
    original = DefaultStager._stage

    def stage_then_close(self: DefaultStager, state_dict: dict, **kw: object) -> dict:
        out = original(self, state_dict, **kw)
        self._state_dict_stager.close()
        return out

    monkeypatch.setattr(DefaultStager, "_stage", stage_then_close)


def _plain() -> DefaultStager:
    return DefaultStager(StagingOptions(use_pinned_memory=False, use_shared_memory=False,
                                        use_async_staging=True, use_non_blocking_copy=False))


def _save_three(stager: object, root: Path) -> list[dict[str, torch.Tensor]]:
    saved = []
    for i in range(3):
        state = {"w": torch.full((64,), float(i)), "meta": {"step": i, "kind": torch.float32}}
        resp = dcp.async_save(state, checkpoint_id=str(root / f"s{i}"), async_stager=stager, no_dist=True)
        resp.upload_completion.result()
        saved.append(state)
    return saved


def test_a_spent_default_stager_fails_its_second_save(tmp_path: Path, spends_after_stage: None) -> None:
    """The reproduction is faithful: a plain DefaultStager fails the way it did on the GPU machine."""
    stager = _plain()
    with pytest.raises(KeyError):
        _save_three(stager, tmp_path)
    assert stager_spent(stager)
    stager.close()


def test_reusable_stager_saves_every_checkpoint(tmp_path: Path, spends_after_stage: None) -> None:
    stager = background_stager(cuda=False)
    assert isinstance(stager, ReusableStager)
    _save_three(stager, tmp_path)
    for i in range(3):
        back = {"w": torch.zeros(64), "meta": {"step": -1, "kind": None}}
        dcp.load(back, checkpoint_id=str(tmp_path / f"s{i}"), no_dist=True)
        assert torch.equal(back["w"], torch.full((64,), float(i))) and back["meta"]["step"] == i
    stager.close()


def test_a_stager_that_stays_usable_is_kept(tmp_path: Path) -> None:
    """With the pinned torch nothing is replaced: the pinned buffers of a GPU run stay allocated once."""
    stager = background_stager(cuda=False)
    first = stager._inner
    _save_three(stager, tmp_path)
    assert stager._inner is first and not stager_spent(first)
    stager.close()
