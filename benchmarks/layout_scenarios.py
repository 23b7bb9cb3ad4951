"""The jobs one rank of the harness can run: train a layout, save a DCP checkpoint, resume from one."""

from __future__ import annotations

import resource
from typing import Any

import torch
import torch.distributed.checkpoint as dcp

from trainer.engine import all_ranks_agree
from trainer.parallel import build_hybrid_engine
from benchmarks.layout_harness import batches, make_cfg, shard_batch, train_steps


def _comm_counts(engine: Any, cfg: Any, data: list[Any]) -> dict[str, int]:
    """Collective counts of one step by op, from DTensor's CommDebugMode (counts, not bytes)."""
    from torch.distributed.tensor.debug import CommDebugMode
    mode = CommDebugMode()
    with mode:
        train_steps(engine, cfg, data[:1])
    return {str(k).split(".")[-1]: int(v) for k, v in mode.get_comm_counts().items()}


def run_job(job: dict[str, Any], rank: int, world: int) -> dict[str, Any]:
    cfg = make_cfg(**job["cfg"])
    data = batches(cfg, job.get("steps", 5))
    engine = build_hybrid_engine(cfg, rank, world, torch.device("cpu"))
    lo, hi = job.get("resume_at", 0), len(data)
    if job.get("load"):
        state = engine.state_dict()
        dcp.load(state, checkpoint_id=job["load"])
        engine.load_state_dict(state)
    else:
        lo = 0
    if job.get("save"):
        k = job["save_at"]
        rec = train_steps(engine, cfg, data[:k], poison=_poison(job))
        dcp.save(engine.state_dict(), checkpoint_id=job["save"])
        more = train_steps(engine, cfg, data[k:])
        rec = {key: rec[key] + more[key] for key in rec}
    else:
        rec = train_steps(engine, cfg, data[lo:hi], poison=_poison(job))
    if job.get("eval"):
        x, y = data[0]
        loss = engine.eval_loss(shard_batch(x, engine.dp_rank, engine.dp_size),
                                shard_batch(y, engine.dp_rank, engine.dp_size))
        rec["eval"] = all_ranks_agree(loss, engine.loss_weight, False)[0]
    if job.get("comm") and cfg.parallel.pp == 1:  # CommDebugMode breaks a PipelineStage's forward
        rec["comm"] = _comm_counts(engine, cfg, data)
    rec["dtypes"] = sorted(set(engine.tensor_dtypes().values()))
    rec["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rec["name"] = job.get("name", "")
    return rec


def _poison(job: dict[str, Any]) -> tuple[int, int] | None:
    p = job.get("poison")
    return (int(p[0]), int(p[1])) if p else None
