"""The engine: a model, its optimizer and the parallel layout they live in, behind one small interface.

The training loop only calls the methods of :class:`Engine`; data parallelism (this module) and hybrid
layouts (``trainer.parallel``) are two implementations, so the loop, the guard and the checkpoints do
not change with the layout.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.nn.parallel import DistributedDataParallel as DDP

from spec.config import RunConfig
from trainer.device import SpanTimer, flags_tensor
from trainer.model import GPT, lm_loss

# Flattened optimizer keys (the hybrid engine's format too): a checkpoint written by plain DDP loads into
# any hybrid layout and back (DCP reshards by key).
SD_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Engine:
    """Data-parallel engine (DDP over gloo on CPU, NCCL on GPU); every rank holds the whole model.

    Mixed precision: the parameters and AdamW state stay fp32 (the masters); bf16/fp16 is autocast's
    compute dtype only. fp16 also gets a dynamic loss scaler (its gradients underflow otherwise); DDP
    averages gradients before unscaling, so every rank sees the same overflow and the same scale.
    """

    dp_rank: int
    dp_size: int
    dp_group: Any = None  # process group over which batches differ (None: the world)
    loss_weight: float = 1.0  # 0 on ranks that compute no loss (early pipeline stages)
    timer: SpanTimer | None = None  # times the local work of the last forward_backward
    last_overflow: bool = False  # fp16: the last step's gradients overflowed (not a data problem)

    def __init__(self, cfg: RunConfig, rank: int, world: int, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.dp_rank, self.dp_size = rank, world
        self.timer = SpanTimer(device)
        torch.manual_seed(cfg.train.seed)
        model = GPT(cfg.model).to(device)
        self.module = model
        self.model: nn.Module = DDP(model) if world > 1 else model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr,
                                           weight_decay=cfg.train.weight_decay, foreach=False)
        self.scaler = torch.amp.GradScaler(device.type) if cfg.train.precision == "fp16" else None
        self._unscaled = False
        self.state_dict()  # initialise optimizer state now, identically in every run (resume equality)

    @property
    def local_s(self) -> float:
        """Seconds of local work in the last forward_backward, before any collective (straggler
        timing); on a GPU this waits for that work, never for what was queued after it."""
        return self.timer.seconds() if self.timer is not None else 0.0

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
        assert self.timer is not None
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        self.timer.start()
        self.optimizer.zero_grad(set_to_none=True)
        self._unscaled, self.last_overflow = False, False
        with self.autocast():
            loss = lm_loss(self.model(x), y)
        if poison:
            loss = loss * float("nan")
        self.timer.stop()
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        return float(loss.detach())

    def clip_grad_norm(self, max_norm: float) -> float:
        """Unscale first (fp16), so the norm and the clip are in true units; an overflow makes the
        norm non-finite and ``last_overflow`` tells the loop it is the scaler's, not the data's."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
            self._unscaled = True
        norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), max_norm))
        self.last_overflow = self.scaler is not None and not torch.isfinite(torch.tensor(norm)).item()
        return norm

    def apply(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        if self.scaler is None:
            self.optimizer.step()
            return
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._unscaled = False

    def discard(self) -> None:
        """Drop the gradients; with fp16 the scaler still updates (backs off after an overflow)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None and self._unscaled:
            self.scaler.update()
            self._unscaled = False

    @torch.no_grad()
    def eval_loss(self, x: torch.Tensor, y: torch.Tensor) -> float:
        with self.autocast():
            return float(lm_loss(self.module(x.to(self.device)), y.to(self.device)))

    def state_dict(self) -> dict[str, Any]:
        msd, osd = get_state_dict(self.module, self.optimizer, options=SD_OPTIONS)
        state: dict[str, Any] = {"model": msd, "optim": osd}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_state_dict(self.module, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"], options=SD_OPTIONS)
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    # ---- the memory tier's fast path (trainer.memtier) --------------------------------------------
    def memory_state(self) -> dict[str, Any]:
        """What the memory tier copies after every step: torch's native state dicts, about 1 ms for the
        demo model where DCP's flattened form (``state_dict``) takes ~100x that. Hybrid layouts (a
        subclass) keep the DCP form, whose DTensor shards ``trainer.memtier`` copies locally."""
        if type(self) is not Engine:
            return self.state_dict()
        state: dict[str, Any] = {"model": self.module.state_dict(), "optim": self.optimizer.state_dict()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_memory_state(self, saved: dict[str, Any]) -> None:
        if type(self) is not Engine:
            from trainer.memtier import copy_into
            self.load_state_dict(copy_into(self.state_dict(), saved))
            return
        self.module.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optim"])
        if self.scaler is not None and "scaler" in saved:
            self.scaler.load_state_dict(saved["scaler"])

    def storage_form(self, saved: dict[str, Any]) -> dict[str, Any] | None:
        """A native ``memory_state`` copy in DCP's flattened form (the keys and values ``state_dict``
        gives), so a storage checkpoint can be written from the memory tier's copy; None for subclasses."""
        if type(self) is not Engine:
            return None
        fqns = [name for name, _ in self.module.named_parameters()]  # the optimizer's parameter order
        osd, flat = saved["optim"], {}
        for idx, st in osd["state"].items():
            for k, v in st.items():
                flat[f"state.{fqns[idx]}.{k}"] = v
        for group in osd["param_groups"]:
            for idx in group["params"]:
                flat.update({f"param_groups.{fqns[idx]}.{k}": v for k, v in group.items() if k != "params"})
        out = {"model": saved["model"], "optim": flat}
        if "scaler" in saved:
            out["scaler"] = saved["scaler"]
        return out

    def tensor_dtypes(self) -> dict[str, str]:
        return {k: str(v.dtype).replace("torch.", "") for k, v in self.module.state_dict().items()}


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
    t = flags_tensor([local_loss * weight if weight else 0.0, weight, 1.0 if local_bad else 0.0, *counts])
    dist.all_reduce(t)
    v = t.tolist()  # one device-to-host copy
    return v[0] / max(v[1], 1.0), v[2] > 0 or not math.isfinite(v[0]), [float(x) for x in v[3:]]
