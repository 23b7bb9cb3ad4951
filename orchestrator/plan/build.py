"""Assemble a :class:`Plan` from a validated config: the one entry point ``plan`` and ``submit`` share."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from spec.config import RunConfig
from orchestrator.plan import model_math as mm
from orchestrator.plan.hardware import GpuSpec, get_gpu
from orchestrator.plan.layout import LayoutChoice, SearchSpace, hardware_warnings, recommend_layout
from orchestrator.plan.memory import LayoutSpec, estimate_memory
from orchestrator.plan.noise import NoiseScale, estimate_noise_scale
from orchestrator.plan.reliability import (DEFAULT_CKPT_BANDWIDTH_GBS, DEFAULT_FAILURE_RATE, DEFAULT_RESTART_S,
                                           Reliability, checkpoint_cost, plan_reliability, state_size_bytes)

DEFAULT_MFU = 0.4
MFU_SOURCE = ("Llama 3 report (Meta 2024), Table 4: 38-43% BF16 MFU on 8K-16K H100s; PaLM (Chowdhery et al. "
              "2022) reports 46%. 0.4 is a realistic, not optimistic, default")
DEFAULT_GPU = "h100-sxm"


@dataclass
class Plan:
    """Everything ``orchestrator plan`` reports; plain data so it can be printed, compared or dumped as JSON."""

    name: str
    gpu: GpuSpec
    gpus: int
    gpus_per_node: int
    nodes: int
    shape: mm.ModelShape
    params: int
    non_embedding_params: int
    tokens: float
    tokens_source: str
    flops: dict[str, float]
    chinchilla_tokens: float
    mfu: float
    step_s: float
    steps: int
    compute_s: float
    layout: LayoutChoice
    configured: LayoutChoice | None
    reliability: Reliability
    noise: NoiseScale | None
    price_per_gpu_hour: float | None = None
    warnings: list[str] = field(default_factory=list)
    mfu_source: str = MFU_SOURCE

    @property
    def chinchilla_ratio(self) -> float:
        return self.tokens / self.chinchilla_tokens

    @property
    def gpu_hours(self) -> float:
        return self.compute_s * self.gpus / 3600.0

    @property
    def expected_wall_s(self) -> float:
        """Failure-free compute time stretched by the Young/Daly goodput."""
        gp = self.reliability.goodput
        return self.compute_s / gp if gp > 0 else math.inf

    @property
    def expected_gpu_hours(self) -> float:
        return self.expected_wall_s * self.gpus / 3600.0

    @property
    def cost(self) -> float | None:
        if self.price_per_gpu_hour is None:
            return None
        return self.expected_gpu_hours * self.price_per_gpu_hour


def tp_ceiling(gpu: GpuSpec, gpus_per_node: int) -> int:
    """TP stays inside one NVLink domain: the node, unless NVLink spans more than a node (NVL72)."""
    if gpu.nvlink_domain > gpu.gpus_per_node:
        return gpu.nvlink_domain
    return max(1, min(gpu.nvlink_domain, gpus_per_node))


def configured_layout(cfg: RunConfig, shape: mm.ModelShape, gpus: int, capacity: float) -> LayoutChoice | None:
    """The config's own ``parallel`` section evaluated on this hardware, if it is a valid layout of ``gpus``."""
    par, gb = cfg.parallel, cfg.train.global_batch
    if gpus % (par.tp * par.pp):
        return None
    dp = par.dp_of(gpus)
    if dp * par.tp * par.pp != gpus or gb % (dp * par.microbatches) or shape.n_layers % par.pp:
        return None
    spec = LayoutSpec(dp=dp, tp=par.tp, pp=par.pp, microbatches=par.microbatches,
                      micro_batch=gb // (dp * par.microbatches), sp=par.sp, pp_schedule=par.pp_schedule,
                      dp_mode=par.dp_mode)
    mem = estimate_memory(shape, spec, cfg.train.precision, capacity)
    return LayoutChoice(spec=spec, memory=mem, recompute=not mem.fits, fits=mem.fits_recompute)


@dataclass(frozen=True)
class PlanOptions:
    """The knobs of ``build_plan`` beyond the config; every default is stated where it is defined."""

    mfu: float = DEFAULT_MFU
    price_per_gpu_hour: float | None = None
    failure_rate: float = DEFAULT_FAILURE_RATE
    ckpt_bandwidth_gbs: float = DEFAULT_CKPT_BANDWIDTH_GBS
    restart_s: float = DEFAULT_RESTART_S
    run_dir: Path | None = None
    gpus_per_node: int | None = None


def _tokens(cfg: RunConfig, tokens: float | None) -> tuple[float, str]:
    if tokens:
        return float(tokens), "--tokens"
    t = cfg.train.steps * cfg.train.global_batch * cfg.model.seq_len
    return float(t), "train.steps x global_batch x seq_len"


def build_plan(cfg: RunConfig, gpus: int | None = None, gpu_type: str = DEFAULT_GPU, tokens: float | None = None,
               options: PlanOptions | None = None, **kw: object) -> Plan:
    """Size the run in ``cfg`` on ``gpus`` GPUs of ``gpu_type`` (default: the config's world size).

    Keyword arguments named like :class:`PlanOptions` fields (mfu=, run_dir=, ...) override ``options``.
    """
    opt = PlanOptions(**{**(options.__dict__ if options else {}), **kw})  # type: ignore[arg-type]
    gpu = get_gpu(gpu_type)
    n_gpus = gpus or cfg.cluster.world_size
    per_node = opt.gpus_per_node or (cfg.cluster.ranks_per_node if gpus is None else gpu.gpus_per_node)
    nodes = math.ceil(n_gpus / per_node)
    shape = mm.shape_from_config(cfg.model)
    n = mm.count_params(shape)
    n_tokens, source = _tokens(cfg, tokens)
    flops = mm.training_flops(shape, n_tokens)
    tokens_per_step = cfg.train.global_batch * cfg.model.seq_len
    step_s = flops["with_attention"] / n_tokens * tokens_per_step / (n_gpus * gpu.bf16_dense_flops * opt.mfu)
    compute_s = flops["with_attention"] / (n_gpus * gpu.bf16_dense_flops * opt.mfu)
    space = SearchSpace(world=n_gpus, tp_max=tp_ceiling(gpu, per_node), global_batch=cfg.train.global_batch,
                        precision=cfg.train.precision, capacity=gpu.memory_bytes,
                        pp_schedule=cfg.parallel.pp_schedule, dp_mode=cfg.parallel.dp_mode)
    layout = recommend_layout(shape, space)
    ckpt = checkpoint_cost(state_size_bytes(n, cfg.train.precision), nodes, opt.ckpt_bandwidth_gbs, opt.run_dir)
    steps = math.ceil(n_tokens / tokens_per_step)
    every = cfg.checkpoint.every_steps if isinstance(cfg.checkpoint.every_steps, int) else 0  # 0: auto
    rel = plan_reliability(ckpt, n_gpus, compute_s, step_s, every, steps,
                           failure_rate=opt.failure_rate, restart_s=opt.restart_s)
    noise = estimate_noise_scale(opt.run_dir, cfg.model.seq_len, cfg.train.global_batch) if opt.run_dir else None
    return Plan(name=cfg.name, gpu=gpu, gpus=n_gpus, gpus_per_node=per_node, nodes=nodes, shape=shape, params=n,
                non_embedding_params=mm.non_embedding_params(shape), tokens=n_tokens, tokens_source=source,
                flops=flops, chinchilla_tokens=mm.chinchilla_tokens(n), mfu=opt.mfu, step_s=step_s,
                steps=steps, compute_s=compute_s, layout=layout,
                configured=configured_layout(cfg, shape, n_gpus, gpu.memory_bytes), reliability=rel, noise=noise,
                price_per_gpu_hour=opt.price_per_gpu_hour, warnings=hardware_warnings(shape, layout.spec))
