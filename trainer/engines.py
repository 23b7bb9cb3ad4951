"""Which engine a rank builds for the configured layout: the plain DDP one, or the hybrid one (in
:mod:`trainer.parallel`, which builds on :class:`trainer.engine.Engine`), chosen here so neither
engine module imports the other's package."""

from __future__ import annotations

import torch

from spec.config import RunConfig
from trainer.engine import Engine


def build_engine(cfg: RunConfig, rank: int, world: int, device: torch.device) -> Engine:
    """Pick the engine for the configured layout."""
    par = cfg.parallel
    if par.tp > 1 or par.pp > 1 or par.dp_mode != "ddp":
        from trainer.parallel import build_hybrid_engine  # heavy imports only when needed
        return build_hybrid_engine(cfg, rank, world, device)
    return Engine(cfg, rank, world, device)
