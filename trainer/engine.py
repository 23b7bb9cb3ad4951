"""The engine: a model, its optimizer and the parallel layout they live in, behind one small interface.

The training loop only calls the methods of :class:`Engine`; data parallelism (this module) and hybrid
layouts (``trainer.parallel``) are two implementations, so the loop, the guard and the checkpoints do
not change with the layout.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.nn.parallel import DistributedDataParallel as DDP

from orchestrator.config import RunConfig
from trainer.model import GPT, lm_loss

# Flattened optimizer keys (the hybrid engine's format too): a checkpoint written by plain DDP loads into
# any hybrid layout and back (DCP reshards by key).
SD_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Engine:
    """Data-parallel engine (DDP over gloo on CPU, NCCL on GPU); every rank holds the whole model."""

    dp_rank: int
    dp_size: int
    dp_group: Any = None  # process group over which batches differ (None: the world)
    loss_weight: float = 1.0  # 0 on ranks that compute no loss (early pipeline stages)
    local_s: float = 0.0  # seconds of local work in the last forward_backward, before any collective

    def __init__(self, cfg: RunConfig, rank: int, world: int, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.dp_rank, self.dp_size = rank, world
        torch.manual_seed(cfg.train.seed)
        model = GPT(cfg.model).to(device)
        self.module = model
        self.model: nn.Module = DDP(model) if world > 1 else model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr,
                                           weight_decay=cfg.train.weight_decay, foreach=False)
        self.state_dict()  # initialise optimizer state now, identically in every run (resume equality)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        prec = self.cfg.train.precision
        if prec == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=DTYPES[prec])

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, poison: bool = False) -> float:
        """One micro-step; returns this rank's mean loss (gradients are averaged over data ranks).

        Sets ``local_s``: the seconds of purely local work (the forward pass), before the first
        collective, so a straggler shows up as itself and not as everyone waiting for it.
        """
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = lm_loss(self.model(x.to(self.device)), y.to(self.device))
        if poison:
            loss = loss * float("nan")
        self.local_s = time.perf_counter() - t0
        loss.backward()
        return float(loss.detach())

    def clip_grad_norm(self, max_norm: float) -> float:
        return float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), max_norm))

    def apply(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.step()

    def discard(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def eval_loss(self, x: torch.Tensor, y: torch.Tensor) -> float:
        with self.autocast():
            return float(lm_loss(self.module(x.to(self.device)), y.to(self.device)))

    def state_dict(self) -> dict[str, Any]:
        msd, osd = get_state_dict(self.module, self.optimizer, options=SD_OPTIONS)
        return {"model": msd, "optim": osd}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_state_dict(self.module, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"], options=SD_OPTIONS)

    def tensor_dtypes(self) -> dict[str, str]:
        return {k: str(v.dtype).replace("torch.", "") for k, v in self.module.state_dict().items()}


def build_engine(cfg: RunConfig, rank: int, world: int, device: torch.device) -> Engine:
    """Pick the engine for the configured layout."""
    par = cfg.parallel
    if par.tp > 1 or par.pp > 1 or par.dp_mode != "ddp":
        from trainer.parallel import build_hybrid_engine  # heavy imports only when needed
        return build_hybrid_engine(cfg, rank, world, device)
    return Engine(cfg, rank, world, device)


def all_ranks_agree(local_loss: float, weight: float, local_bad: bool) -> tuple[float, bool]:
    """One all-reduce gives every rank the weighted mean loss and whether any rank was bad."""
    mean, bad, _ = agree_with_counts(local_loss, weight, local_bad)
    return mean, bad


def agree_with_counts(local_loss: float, weight: float, local_bad: bool,
                      counts: tuple[float, ...] = ()) -> tuple[float, bool, list[float]]:
    """One all-reduce gives every rank the weighted mean loss, whether any rank was bad, and the sums
    of ``counts`` (flags other parts of the step piggyback on the same collective, such as "my async
    checkpoint write is finished").

    ``weight`` is 0 on ranks that hold no loss (early pipeline stages), 1 elsewhere.
    """
    if not dist.is_initialized():
        return local_loss, local_bad, list(counts)
    t = torch.tensor([local_loss * weight if weight else 0.0, weight, 1.0 if local_bad else 0.0, *counts],
                     dtype=torch.float64)
    dist.all_reduce(t)
    mean = float(t[0]) / max(float(t[1]), 1.0)
    return mean, bool(t[2] > 0) or not torch.isfinite(t[0]).item(), [float(x) for x in t[3:]]
