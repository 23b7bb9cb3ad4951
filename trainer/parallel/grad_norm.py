"""Gradient norm over every mesh dimension, identical on every rank.

Parameters live on different meshes and placements (TP-sharded DTensors, FSDP-sharded ones, plain
tensors); the norm is computed per (mesh, placements) group so each DTensor reduction is over the right
ranks, the squares are summed, and with pipelining the squared norm is all-reduced over the pp group so
every stage clips with (and the loop's guard judges) the whole model's norm. A NaN on any one shard
therefore reaches every rank.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from trainer.device import collective_device


def _group_key(g: torch.Tensor) -> str:
    """Rank-independent: every rank must issue the same reductions in the same order."""
    if isinstance(g, DTensor):
        return f"{g.device_mesh.mesh_dim_names}|{tuple(g.placements)}|{g.dtype}"
    return f"local|{g.dtype}"


def total_norm(grads: list[torch.Tensor], pp_group: dist.ProcessGroup | None) -> torch.Tensor:
    """The global L2 norm (float64 scalar, plain tensor) of ``grads`` across all shards and stages."""
    groups: dict[str, list[torch.Tensor]] = defaultdict(list)
    for g in grads:
        groups[_group_key(g)].append(g)
    sq = torch.zeros((), dtype=torch.float64)
    for key in sorted(groups):  # the same order on every rank: the reductions must line up
        n = torch.nn.utils.get_total_norm(groups[key], 2.0, foreach=False)
        if isinstance(n, DTensor):
            n = n.full_tensor()
        sq = sq + n.double() ** 2
    if pp_group is not None and dist.get_world_size(pp_group) > 1:
        sq = sq.to(collective_device(pp_group))  # NCCL takes CUDA tensors only
        dist.all_reduce(sq, group=pp_group)
    return sq.sqrt()


def clip_(params: Iterable[torch.nn.Parameter], max_norm: float,
          pp_group: dist.ProcessGroup | None) -> float:
    """Clip in place like ``torch.nn.utils.clip_grad_norm_``; returns the norm before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = float(total_norm(grads, pp_group))
    coef = min(max_norm / (norm + 1e-6), 1.0)
    if coef < 1.0:  # NaN compares False: the guard discards such a step anyway
        with torch.no_grad():
            for g in grads:
                g.mul_(coef)
    return norm
