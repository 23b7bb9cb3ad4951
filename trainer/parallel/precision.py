"""Mixed precision for the hybrid engine: fp32 master weights always.

bf16/fp16 compute comes from the FSDP2 ``MixedPrecisionPolicy`` (params cast for compute, gradients
reduced in fp32, sharded masters stay fp32), which both ``fully_shard`` and ``replicate`` accept, so one
mechanism covers every hybrid layout. fp16 also needs dynamic loss scaling: ``ShardedGradScaler`` is
``torch.amp.GradScaler`` whose ``unscale_`` all-reduces "found inf" over a process group, so every rank
(whatever shard overflowed) agrees on skipping and on the next scale.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def mp_policy(precision: str) -> MixedPrecisionPolicy:
    if precision == "fp32":
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=DTYPES[precision], reduce_dtype=torch.float32)


def make_scaler(precision: str, device: torch.device) -> ShardedGradScaler | None:
    """A loss scaler for fp16 (agreeing over the world), None otherwise."""
    if precision != "fp16":
        return None
    scaler = ShardedGradScaler(device=device.type, process_group=dist.group.WORLD)
    # The scale is created lazily by the first scale(); early pipeline stages never call it (the loss
    # is on the last stage) but still unscale their gradients, so create it now on every rank.
    scaler.scale(torch.zeros((), device=device))
    return scaler
