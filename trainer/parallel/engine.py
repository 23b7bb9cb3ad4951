"""HybridEngine: the trainer.engine.Engine interface over a (dp, pp, tp) mesh.

Build order matters: one whole GPT from the seed (same init as a single process) → cut this rank's
pipeline stage(s) → tensor-parallelize each part over ``mesh['tp']`` → wrap in FSDP2/replicate over
``mesh['dp']`` → PipelineStage over ``mesh['pp']``. Each part gets its own AdamW (element-wise, so the
same as one optimizer over all parameters); state dicts use flattened optimizer keys so a checkpoint's
keys do not depend on how parameters were grouped into parts, and DCP can reshard between layouts.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor

from spec.config import RunConfig
from trainer.device import SpanTimer
from trainer.engine import Engine
from trainer.model import GPT, lm_loss
from trainer.parallel import grad_norm, pipeline
from trainer.parallel.data_parallel import apply_dp, effective_mode
from trainer.parallel.mesh import build_mesh
from trainer.parallel.precision import make_scaler, mp_policy
from trainer.parallel.tensor_parallel import apply_tp
from trainer.parallel.validate import validate_layout

SD_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


def _build_parts(cfg: RunConfig, mesh: Any, device: torch.device) -> tuple[list[nn.Module], list[int], int]:
    """This rank's model parts (one, or two for interleaved 1F1B), their stage ids and the stage count."""
    par = cfg.parallel
    torch.manual_seed(cfg.train.seed)
    full = GPT(cfg.model).to(device)
    per_rank = pipeline.stages_per_rank(par.pp_schedule, par.pp)
    n_stages = par.pp * per_rank
    ids = pipeline.stage_ids(mesh["pp"].get_local_rank(), par.pp, per_rank)
    parts = [pipeline.cut_stage(full, s, n_stages) for s in ids] if par.pp > 1 else [full]
    mode = effective_mode(par.dp_mode)
    for part in parts:
        apply_tp(part, mesh["tp"], par.sp)
        apply_dp(part, mesh["dp"], mode, mp_policy(cfg.train.precision), reshard_after_forward=par.pp == 1)
    return parts, ids, n_stages


class HybridEngine(Engine):
    """DP × PP × TP engine; the loop sees the same methods and attributes as the data-parallel one."""

    def __init__(self, cfg: RunConfig, rank: int, world: int, device: torch.device) -> None:
        errors, _ = validate_layout(cfg, world)
        if errors:
            raise ValueError("invalid parallel layout: " + "; ".join(f"{f}: {m}" for f, m in errors))
        self.cfg, self.device, self.rank = cfg, device, rank
        self.timer = SpanTimer(device)
        self.mesh = build_mesh(cfg, world, device.type)
        self.dp_rank, self.dp_size = self.mesh["dp"].get_local_rank(), self.mesh["dp"].size()
        self.dp_group = self.mesh["dp"].get_group()
        self.pp_group = self.mesh["pp"].get_group() if cfg.parallel.pp > 1 else None
        self.parts, ids, n_stages = _build_parts(cfg, self.mesh, device)
        self.module = self.model = self.parts[0]
        self.is_first, self.is_last = 0 in ids, n_stages - 1 in ids
        self.loss_weight = 1.0 if self.is_last else 0.0
        self.optimizers = [torch.optim.AdamW(p.parameters(), lr=cfg.train.lr,
                                             weight_decay=cfg.train.weight_decay, foreach=False)
                           for p in self.parts]
        self.optimizer = self.optimizers[0]
        self.scaler = make_scaler(cfg.train.precision, device)
        self._unscaled, self.last_overflow = False, False
        self.schedule = None
        if cfg.parallel.pp > 1:
            self.schedule = pipeline.build_schedule(
                self.parts, ids, n_stages, self.mesh["pp"], device, cfg.parallel.pp_schedule,
                cfg.parallel.microbatches, self._pp_loss)
        self._part_keys = [set(p.state_dict().keys()) for p in self.parts]
        self.state_dict()  # initialise optimizer state now, identically in every run (resume equality)

    # ---- forward/backward -----------------------------------------------------------------------
    def _pp_loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-micro-batch loss on the last stage, scaled for fp16 (what gets differentiated)."""
        loss = lm_loss(out, target)
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def _params(self) -> list[nn.Parameter]:
        return [p for part in self.parts for p in part.parameters()]

    def _run_pipeline(self, x: torch.Tensor, y: torch.Tensor, train: bool) -> float:
        """One schedule step; the mean micro-batch loss on the last stage, 0.0 elsewhere."""
        assert self.schedule is not None
        losses: list[torch.Tensor] = []
        args = (x.to(self.device),) if self.is_first else ()
        kwargs: dict[str, Any] = {"target": y.to(self.device), "losses": losses} if self.is_last else {}
        run = self.schedule.step if train else self.schedule.eval
        run(*args, **kwargs)
        if not self.is_last:
            return 0.0
        # The schedule's own per-micro-batch list: the loss function also runs once for shape
        # inference at the first step, on uninitialised buffers, so counting its calls would be wrong.
        mean = float(torch.stack([t.detach().float() for t in losses]).mean())
        return mean / self.scaler.get_scale() if self.scaler is not None else mean

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, poison: bool = False) -> float:
        """One step's gradients; returns this rank's loss (mean over micro-batches on the last stage).

        ``local_s`` is the whole forward (and, with pipelining, backward) time: under TP/PP there is no
        collective-free stretch to time, so it includes waiting on peers.
        """
        assert self.timer is not None
        self.timer.start()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self._unscaled, self.last_overflow = False, False
        if self.schedule is not None:
            loss = self._run_pipeline(x, y, train=True)
            self.timer.stop()
        else:
            out = lm_loss(self.parts[0](x.to(self.device)), y.to(self.device))
            self.timer.stop()
            (self.scaler.scale(out) if self.scaler is not None else out).backward()
            loss = float(out.detach())
        if poison:
            self._poison_grads()
            return float("nan")
        return loss

    def _poison_grads(self) -> None:
        """Injected fault: NaN in this rank's gradient shards only; the global grad norm spreads it."""
        with torch.no_grad():
            for p in self._params():
                if p.grad is not None:
                    g = p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
                    g.fill_(float("nan"))

    # ---- update -----------------------------------------------------------------------------------
    def clip_grad_norm(self, max_norm: float) -> float:
        """Unscale (fp16), then clip by the norm over all shards and stages (the same on every rank).

        An fp16 overflow makes that norm non-finite on every rank, so the loop's guard discards the step
        (``last_overflow`` tells it apart from a data problem): the scaler's skipped step is never
        counted as applied.
        """
        if self.scaler is not None:
            for opt in self.optimizers:
                self.scaler.unscale_(opt)  # all-reduces found_inf over the world
            self._unscaled = True
        norm = grad_norm.clip_(self._params(), max_norm, self.pp_group)
        self.last_overflow = self.scaler is not None and not torch.isfinite(torch.tensor(norm)).item()
        return norm

    def apply(self, lr: float) -> None:
        for opt in self.optimizers:
            for g in opt.param_groups:
                g["lr"] = lr
            if self.scaler is not None:
                self.scaler.step(opt)
            else:
                opt.step()
        if self.scaler is not None:
            self.scaler.update()
            self._unscaled = False

    def discard(self) -> None:
        """Drop the gradients; with fp16 the scaler still updates (backs off after an overflow)."""
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        if self.scaler is not None and self._unscaled:
            self.scaler.update()
            self._unscaled = False

    # ---- eval -------------------------------------------------------------------------------------
    @torch.no_grad()
    def eval_loss(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Mean loss of this data shard: the same on every TP rank, 0.0 on non-last pipeline stages.

        With pipelining the batch is run in pieces of the training batch size: the stages' buffers
        were sized for that shape at the first step.
        """
        if self.schedule is None:
            return float(lm_loss(self.parts[0](x.to(self.device)), y.to(self.device)))
        per = self.cfg.train.global_batch // self.dp_size
        if x.shape[0] % per:
            raise ValueError(f"eval batch {x.shape[0]} is not a multiple of the per-rank batch {per}")
        losses = [self._run_pipeline(x[i:i + per], y[i:i + per], train=False)
                  for i in range(0, x.shape[0], per)]
        return sum(losses) / len(losses)

    # ---- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """DCP-ready shards: model and (flattened) optimizer state of every part, plus the fp16 scaler."""
        msd: dict[str, Any] = {}
        osd: dict[str, Any] = {}
        for part, opt in zip(self.parts, self.optimizers):
            m, o = get_state_dict(part, opt, options=SD_OPTIONS)
            msd.update(m)
            osd.update(o)
        state: dict[str, Any] = {"model": msd, "optim": osd}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for part, opt, keys in zip(self.parts, self.optimizers, self._part_keys):
            msd = {k: v for k, v in state["model"].items() if k in keys}
            set_state_dict(part, opt, model_state_dict=msd, optim_state_dict=state["optim"],
                           options=SD_OPTIONS)
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def tensor_dtypes(self) -> dict[str, str]:
        """Stored dtypes (the fp32 masters, whatever the compute precision)."""
        return {k: str(v.dtype).replace("torch.", "")
                for part in self.parts for k, v in part.state_dict().items()}
