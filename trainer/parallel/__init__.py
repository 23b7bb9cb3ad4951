"""Hybrid parallelism (dp × pp × tp, sequence parallelism, FSDP2) on PyTorch's own APIs.

Heavy imports (DTensor, pipelining, FSDP) happen only when a hybrid engine is built; the layout helpers
(``rank_layout``, ``node_map``, ``validate_layout``) are cheap and safe to call from the config loader.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spec.config import RunConfig
from trainer.parallel.mesh import node_map, rank_layout
from trainer.parallel.validate import validate_layout

if TYPE_CHECKING:
    import torch

    from trainer.parallel.engine import HybridEngine

__all__ = ["build_hybrid_engine", "node_map", "rank_layout", "validate_layout"]


def build_hybrid_engine(cfg: RunConfig, rank: int, world: int, device: "torch.device") -> "HybridEngine":
    """The Engine for any layout with tp>1, pp>1 or a dp_mode other than ddp."""
    from trainer.parallel.engine import HybridEngine
    return HybridEngine(cfg, rank, world, device)
