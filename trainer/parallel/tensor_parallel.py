"""Tensor (and sequence) parallelism for trainer.model.GPT with ``parallelize_module``.

Megatron-style: q/k/v and w1 split by output columns, wo and w2 by input rows, so each block needs one
reduction in attention and one in the MLP. With sequence parallelism the residual stream between those
reductions is split along the sequence (dim 1): LayerNorms run on a 1/tp slice, and the reductions become
reduce-scatter + all-gather (same volume, 1/tp of the activation memory). The plans follow what was
measured exact on this machine (/work/shared/TORCH_NOTES.md).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)


def block_plan(sp: bool) -> dict[str, Any]:
    """Plan for one Block; keys are FQNs relative to the block."""
    out = Shard(1) if sp else Replicate()
    plan: dict[str, Any] = {
        "attn.wq": ColwiseParallel(), "attn.wk": ColwiseParallel(), "attn.wv": ColwiseParallel(),
        "attn.wo": RowwiseParallel(output_layouts=out),
        "mlp.w1": ColwiseParallel(), "mlp.w2": RowwiseParallel(output_layouts=out),
    }
    if sp:
        gather = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
        plan.update({"ln1": SequenceParallel(), "attn": gather, "ln2": SequenceParallel(),
                     "mlp": PrepareModuleInput(input_layouts=(Shard(1),),
                                               desired_input_layouts=(Replicate(),))})
    return plan


def root_plan(model: nn.Module, sp: bool) -> dict[str, Any]:
    """Plan for the embeddings, final norm and head, for the parts this pipeline stage owns.

    Position embeddings come out as Shard(0) under sequence parallelism: a (t/tp, d) slice that
    broadcasts against the token embeddings' (b, t/tp, d) slice.
    """
    plan: dict[str, Any] = {}
    if getattr(model, "tok_emb", None) is not None:
        plan["tok_emb"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1) if sp else Replicate())
    if getattr(model, "pos_emb", None) is not None:
        plan["pos_emb"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(0) if sp else Replicate())
    if getattr(model, "norm", None) is not None and sp:
        plan["norm"] = SequenceParallel()
    if getattr(model, "head", None) is not None:
        plan["head"] = ColwiseParallel(input_layouts=Shard(1) if sp else Replicate(),
                                       output_layouts=Replicate())
    return plan


def apply_tp(model: nn.Module, tp_mesh: DeviceMesh, sp: bool) -> nn.Module:
    """Shard ``model`` (a GPT or a pipeline stage of one) in place over ``tp_mesh``."""
    if tp_mesh.size() == 1:
        return model
    for block in model.layers.values():
        parallelize_module(block, tp_mesh, block_plan(sp))
    plan = root_plan(model, sp)
    if plan:
        parallelize_module(model, tp_mesh, plan)
    return model
