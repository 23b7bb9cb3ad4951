"""Layout checks the config loader can run before any process starts: a bad layout fails in seconds.

Errors are layouts that cannot run (a shape that does not divide); warnings are layouts that run but
waste hardware (odd dimensions, a TP group spread across nodes).
"""

from __future__ import annotations

from spec.config import RunConfig


def _tp_errors(cfg: RunConfig) -> list[tuple[str, str]]:
    m, tp = cfg.model, cfg.parallel.tp
    errs = []
    for field, value in (("model.n_heads", m.n_heads), ("model.d_model", m.d_model),
                         ("model.d_ff", m.ffn), ("model.vocab_size", m.vocab_size)):
        if value % tp:
            errs.append((field, f"{value} is not divisible by parallel.tp={tp}"))
    if cfg.parallel.sp and tp > 1 and m.seq_len % tp:
        errs.append(("model.seq_len", f"{m.seq_len} is not divisible by parallel.tp={tp} (sequence parallel)"))
    return errs


def _pp_errors(cfg: RunConfig, dp: int) -> list[tuple[str, str]]:
    par, errs = cfg.parallel, []
    stages = par.pp * (2 if par.pp_schedule == "interleaved_1f1b" and par.pp > 1 else 1)
    if cfg.model.n_layers % stages:
        errs.append(("model.n_layers", f"{cfg.model.n_layers} layers cannot be split into {stages} "
                     f"pipeline stages ({par.pp_schedule})"))
    if par.pp > 1 and par.pp_schedule != "gpipe" and par.microbatches < par.pp:
        errs.append(("parallel.microbatches", f"{par.microbatches} < pp={par.pp}: {par.pp_schedule} "
                     "needs at least one micro-batch per stage"))
    per_rank = cfg.train.global_batch // dp if cfg.train.global_batch % dp == 0 else None
    if per_rank is None:
        errs.append(("train.global_batch", f"{cfg.train.global_batch} is not divisible by dp={dp}"))
    elif per_rank % par.microbatches:
        errs.append(("parallel.microbatches", f"global_batch/dp = {per_rank} is not divisible by "
                     f"microbatches={par.microbatches}"))
    return errs


def _layout_errors(cfg: RunConfig, world: int) -> tuple[list[tuple[str, str]], int]:
    par = cfg.parallel
    if par.dp is None:
        if world % (par.tp * par.pp):
            return [("parallel", f"world size {world} is not divisible by tp*pp={par.tp * par.pp}")], 1
        return [], max(par.dp_of(world), 1)
    if par.dp * par.tp * par.pp != world:
        return [("parallel", f"dp*pp*tp = {par.dp}*{par.pp}*{par.tp} != world size {world}")], par.dp
    return [], par.dp


def _warnings(cfg: RunConfig) -> list[str]:
    m, par, warns = cfg.model, cfg.parallel, []
    if m.vocab_size % 64:
        warns.append(f"model.vocab_size={m.vocab_size} is not a multiple of 64 (pad it: faster matmuls)")
    for name, value in (("d_model", m.d_model), ("d_ff", m.ffn)):
        local = value // par.tp if value % par.tp == 0 else value
        if local % 16:
            mult = "8" if local % 8 else "16"
            warns.append(f"model.{name}={value} (per TP rank {local}) is not a multiple of {mult}: "
                         "tensor cores want multiples of 8 (fp16/bf16) or 16")
    if par.tp > cfg.cluster.ranks_per_node:
        warns.append(f"parallel.tp={par.tp} > cluster.ranks_per_node={cfg.cluster.ranks_per_node}: "
                     "a TP group crosses nodes, its per-layer collectives go over the network")
    if par.dp_mode == "ddp" and (par.tp > 1 or par.pp > 1):
        warns.append("parallel.dp_mode=ddp with tp>1 or pp>1 runs as replicate (FSDP2-based DDP): "
                     "plain DDP cannot wrap a tensor-parallel model")
    return warns


def validate_layout(cfg: RunConfig, world: int | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """(errors as (field, message), warnings) for the parallel layout of ``cfg``."""
    world = world if world is not None else cfg.cluster.world_size
    errors, dp = _layout_errors(cfg, world)
    errors += _tp_errors(cfg) + _pp_errors(cfg, dp)
    return errors, _warnings(cfg)
