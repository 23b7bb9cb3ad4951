"""Data parallelism composed with TP/PP: FSDP2 ``fully_shard`` or FSDP2-based ``replicate``.

Plain DDP cannot wrap a DTensor (tensor-parallel) model (its broadcast has no sharding strategy), and the
older ``torch.distributed._composable.replicate`` runs over one but gives wrong losses silently, so
dp_mode "ddp" in a hybrid layout runs as ``replicate_with_fsdp.replicate`` (DDP semantics: whole
parameters, all-reduced gradients) and says so once.
"""

from __future__ import annotations

import logging

from torch import nn
from torch.distributed._composable.replicate_with_fsdp import replicate
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

log = logging.getLogger(__name__)


def effective_mode(dp_mode: str) -> str:
    if dp_mode == "ddp":
        log.warning("parallel.dp_mode=ddp with tp>1 or pp>1: running replicate (FSDP2-based DDP) instead")
        return "replicate"
    return dp_mode


def apply_dp(model: nn.Module, dp_mesh: DeviceMesh, dp_mode: str, mp: MixedPrecisionPolicy,
             reshard_after_forward: bool = True) -> nn.Module:
    """Wrap each block, then the root (embeddings/norm/head), so communication overlaps per block.

    With pipelining, ``reshard_after_forward`` is False: each micro-batch would re-gather otherwise.
    """
    if dp_mode == "fsdp":
        for block in model.layers.values():
            fully_shard(block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
        fully_shard(model, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    elif dp_mode == "replicate":
        for block in model.layers.values():
            replicate(block, mesh=dp_mesh, mp_policy=mp)
        replicate(model, mesh=dp_mesh, mp_policy=mp)
    else:
        raise ValueError(f"unknown dp_mode {dp_mode!r}")
    return model
