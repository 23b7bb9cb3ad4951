"""Pipeline stages cut from a whole GPT, and the schedule that drives them.

Each stage is the GPT with the layers it does not own deleted from the ``ModuleDict`` and the
embeddings/head it does not own set to ``None``: parameter names stay those of the whole model in every
layout, which is what lets DCP reshard a checkpoint between layouts.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B, "interleaved_1f1b": ScheduleInterleaved1F1B}


def stages_per_rank(schedule: str, pp: int) -> int:
    """Interleaved 1F1B needs at least two model chunks per rank (looped placement)."""
    return 2 if schedule == "interleaved_1f1b" and pp > 1 else 1


def stage_ids(pp_rank: int, pp: int, per_rank: int) -> list[int]:
    """Looped placement: rank r holds stages r, r+pp, r+2pp, ... (what the interleaved schedule expects)."""
    return [pp_rank + k * pp for k in range(per_rank)]


def cut_stage(model: nn.Module, stage: int, n_stages: int) -> nn.Module:
    """A copy of ``model`` keeping only what pipeline stage ``stage`` of ``n_stages`` computes."""
    part = copy.deepcopy(model)
    n = len(part.layers)
    per = n // n_stages
    for i in range(n):
        if not stage * per <= i < (stage + 1) * per:
            del part.layers[str(i)]
    if stage > 0:
        part.tok_emb = None
        part.pos_emb = None
    if stage < n_stages - 1:
        part.norm = None
        part.head = None
    return part


def build_schedule(parts: list[nn.Module], ids: list[int], n_stages: int, pp_mesh: DeviceMesh,
                   device: torch.device, schedule: str, microbatches: int,
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Any:
    """PipelineStages for this rank's parts, and the configured schedule over them.

    Shapes are inferred at the first step (the stage runs its forward once on real inputs), so the
    activations' local shapes under tensor/sequence parallelism need no hand-written metadata.
    """
    group = pp_mesh.get_group()
    stages = [PipelineStage(p, s, n_stages, device, group=group) for p, s in zip(parts, ids)]
    cls = SCHEDULES[schedule]
    if cls is ScheduleInterleaved1F1B:
        return cls(stages, n_microbatches=microbatches, loss_fn=loss_fn)
    return cls(stages[0], n_microbatches=microbatches, loss_fn=loss_fn)
