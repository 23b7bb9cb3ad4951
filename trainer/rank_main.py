"""Entry point of one training rank: ``python -m trainer.rank_main``.

The rank learns who it is from the environment (``RANK``/``WORLD_SIZE``/``MASTER_*`` set by the local
node agent, or Slurm's ``SLURM_*`` under srun), reads the resolved config from the run directory, and
knows nothing about the scheduler or the metrics stack.
"""

from __future__ import annotations

import faulthandler
import functools
import gc
import os
import signal
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from trainer import memstore
from spec.config import RunConfig
from trainer import device as placement
from trainer import preempt
from trainer.chaos import Chaos
from trainer.data import Corpus
from trainer.engines import build_engine
from trainer.fence import EpochGuard
from trainer.ft_heartbeat import attach as attach_ft_heartbeat
from trainer.loop import TrainLoop
from trainer.memtier import MemoryTier
from trainer.parallel.mesh import shard_of
from trainer.telemetry import Telemetry
from trainer.telemetry_auth import key_from_env
from spec.layout import checkpoint_root


@dataclass(frozen=True)
class RankContext:
    rank: int
    world: int
    local_rank: int
    node: str
    node_index: int
    run_dir: Path
    attempt: int
    telemetry_addr: str | None


def _env(*names: str, default: str | None = None) -> str:
    for n in names:
        if n in os.environ:
            return os.environ[n]
    if default is None:
        raise SystemExit(f"rank_main: none of {names} is set in the environment")
    return default


def context_from_env() -> RankContext:
    """Local-cluster variables first, then Slurm's (srun sets SLURM_PROCID and friends)."""
    return RankContext(
        rank=int(_env("RANK", "SLURM_PROCID")),
        world=int(_env("WORLD_SIZE", "SLURM_NTASKS")),
        local_rank=int(_env("LOCAL_RANK", "SLURM_LOCALID")),
        node=_env("ORCH_NODE", "SLURMD_NODENAME", default="node0"),
        node_index=int(_env("ORCH_NODE_INDEX", "SLURM_NODEID", default="0")),
        run_dir=Path(_env("ORCH_RUN_DIR")),
        attempt=int(_env("ORCH_ATTEMPT", default="0")),
        telemetry_addr=os.environ.get("ORCH_TELEMETRY_ADDR"),
    )


def load_run_config(run_dir: Path) -> RunConfig:
    return RunConfig.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text()))


def memory_tier(cfg: RunConfig, ctx: RankContext, guard: EpochGuard, tel: Telemetry) -> MemoryTier | None:
    """The memory tier when enabled and a node agent owns a shared-memory directory for it."""
    base = os.environ.get(memstore.ENV_DIR)
    if not cfg.checkpoint.memory.enabled or not base:
        return None
    p = cfg.parallel
    layout = f"tp{p.tp}-pp{p.pp}-{p.dp_mode}"
    replicated = p.dp_mode in ("ddp", "replicate")  # dp replicas hold the same shard: reshardable over dp
    return MemoryTier(Path(base), ctx.rank, ctx.world, layout, guard, ctx.run_dir, tel, key_from_env(), replicated,
                      functools.partial(shard_of, cfg))


PREEMPTED_EXIT = 75  # EX_TEMPFAIL: checkpointed on a preemption/time-limit signal, requeue me


def main() -> int:
    marks = {"forked": float(os.environ.get("ORCH_FORKED_T") or 0) or None, "main": time.time()}
    # What the rank holds now (the warm agent's ~300k objects it was forked with, or its imports) lives
    # as long as it does: keep it out of the collector, whose full passes over it took 0.1-0.3 s each
    # during a restart's restore and first step, and wrote to every copy-on-write page they touched.
    gc.freeze()
    preempt.install((signal.SIGUSR2, signal.SIGTERM))  # the time-limit warning; SIGTERM: preemption
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the supervisor asks for stacks on a hang
    ctx = context_from_env()
    cfg = load_run_config(ctx.run_dir)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    try:  # device: cuda without a usable GPU fails here, naming the node and what is missing
        place = placement.place_rank(cfg.cluster.device, ctx.node, cfg.cluster.ranks_per_node)
        placement.activate(place, ctx.node)
    except placement.DeviceUnavailable as exc:
        print(f"rank {ctx.rank}: {exc}", file=sys.stderr, flush=True)
        return 1
    device = place.device
    print(f"rank {ctx.rank} on {ctx.node}: device {device}, backend {place.backend}", flush=True)
    tel = attach_ft_heartbeat(Telemetry(ctx.telemetry_addr, ctx.rank, ctx.node, ctx.attempt))
    tel.start_heartbeat(cfg.health.heartbeat_interval_s)
    placement.init_process_group(place, ctx.rank, ctx.world, timedelta(seconds=cfg.health.collective_timeout_s))
    marks["process_group"] = time.time()
    chaos = Chaos(cfg.chaos, ctx.run_dir, ctx.rank, ctx.node_index, cfg.cluster.ranks_per_node, ctx.attempt,
                  node_name=ctx.node)
    engine = build_engine(cfg, ctx.rank, ctx.world, device)
    corpus = Corpus.build(cfg.data, cfg.model.seq_len)
    ckpt_group = dist.new_group(backend="gloo") if cfg.checkpoint.async_save else None
    guard = EpochGuard(ctx.run_dir, ctx.attempt)
    loop = TrainLoop(cfg, engine, corpus, tel, chaos, checkpoint_root(ctx.run_dir, cfg.checkpoint.dir), ctx.rank,
                     ctx.world, ckpt_group, guard=guard, mem=memory_tier(cfg, ctx, guard, tel))
    marks["built"] = time.time()
    resumed = loop.restore()
    marks["restored"] = time.time()
    tel.event("started", resume_step=resumed, pid=os.getpid(), startup=marks)  # where a (re)start's time goes
    final = loop.run()
    if final is None:
        tel.close()
        return PREEMPTED_EXIT
    tel.event("done", step=loop.st.step, eval_loss=final)
    tel.close()
    # No destroy_process_group(): its teardown can block on a peer that already left; the process
    # exits right after this (the node agent's child calls os._exit), which releases everything.
    return 0


if __name__ == "__main__":
    sys.exit(main())
