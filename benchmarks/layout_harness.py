"""Multi-process gloo harness shared by the tests and the layout benchmark.

One process group runs a list of scenarios (layouts) one after another, so the seconds spent importing
torch and starting processes are paid once per world size, not once per layout. Each rank writes its
results as JSON; the caller compares them with a single-process reference.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_state_dict

from spec.config import RunConfig
from trainer.engine import all_ranks_agree
from trainer.model import GPT, lm_loss

MODEL = {"vocab_size": 256, "d_model": 32, "n_layers": 4, "n_heads": 4, "seq_len": 16}


def make_cfg(dp: int = 1, tp: int = 1, pp: int = 1, sp: bool = False, schedule: str = "1f1b",
             microbatches: int = 2, dp_mode: str = "fsdp", precision: str = "fp32", batch: int = 8,
             model: dict[str, Any] | None = None) -> RunConfig:
    world = dp * tp * pp
    return RunConfig.model_validate({
        "cluster": {"nodes": 1, "ranks_per_node": world},
        "model": {**MODEL, **(model or {})},
        "train": {"global_batch": batch, "lr": 3e-3, "grad_clip": 1.0, "precision": precision},
        "parallel": {"dp": dp, "tp": tp, "pp": pp, "sp": sp, "pp_schedule": schedule,
                     "microbatches": microbatches, "dp_mode": dp_mode},
    })


def batches(cfg: RunConfig, steps: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        seq = torch.randint(0, cfg.model.vocab_size, (cfg.train.global_batch, cfg.model.seq_len + 1), generator=g)
        out.append((seq[:, :-1], seq[:, 1:]))
    return out


def reference_losses(cfg: RunConfig, data: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    """The single-process run every layout must reproduce: losses per step, then the eval loss on
    the first batch after training (what ``run_job`` with ``eval`` reports)."""
    torch.manual_seed(cfg.train.seed)
    model = GPT(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                            foreach=False)
    get_state_dict(model, opt)  # as the engines do: initialises the optimizer state the same way
    losses = []
    for x, y in data:
        opt.zero_grad()
        loss = lm_loss(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        losses.append(float(lm_loss(model(data[0][0]), data[0][1])))
    return losses


def shard_batch(x: torch.Tensor, dp_rank: int, dp_size: int) -> torch.Tensor:
    per = x.shape[0] // dp_size
    return x[dp_rank * per:(dp_rank + 1) * per]


def train_steps(engine: Any, cfg: RunConfig, data: list[tuple[torch.Tensor, torch.Tensor]],
                poison: tuple[int, int] | None = None) -> dict[str, list[Any]]:
    """What the loop does per step: shard, forward_backward, clip, agree, apply/discard."""
    rec: dict[str, list[Any]] = {"loss": [], "grad_norm": [], "bad": [], "step_s": []}
    for i, (x, y) in enumerate(data):
        t0 = time.perf_counter()
        xs, ys = (shard_batch(t, engine.dp_rank, engine.dp_size) for t in (x, y))
        bad_here = poison is not None and poison == (i, dist.get_rank())
        loss = engine.forward_backward(xs, ys, poison=bad_here)
        norm = engine.clip_grad_norm(cfg.train.grad_clip)
        local_bad = not (torch.isfinite(torch.tensor([loss, norm])).all())
        g_loss, any_bad = all_ranks_agree(loss, engine.loss_weight, bool(local_bad))
        engine.discard() if any_bad else engine.apply(cfg.train.lr)
        rec["step_s"].append(time.perf_counter() - t0)
        rec["loss"].append(g_loss)
        rec["grad_norm"].append(norm)
        rec["bad"].append(any_bad)
    return rec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def spawn(world: int, jobs: list[dict[str, Any]], out_dir: str,
          start_method: str = "spawn") -> list[list[dict[str, Any]]]:
    """Run ``jobs`` in one fresh group of ``world`` processes; results[rank][job].

    ``start_method="fork"`` (the tests): each process starts from this one's imports instead of a fresh
    interpreter importing torch and the engines (~3 s of CPU each on two cores); nothing else is inherited
    that a job uses (each builds its model from ``cfg.train.seed`` and its own process group)."""
    import torch.multiprocessing as mp  # noqa: PLC0415
    os.environ["OMP_NUM_THREADS"] = "1"
    if start_method == "fork":
        import benchmarks.layout_scenarios  # noqa: F401, PLC0415 - imported once here, inherited by each fork
    mp.start_processes(worker, args=(world, free_port(), jobs, out_dir), nprocs=world, start_method=start_method)
    return [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(world)]


def worker(rank: int, world: int, port: int, jobs: list[dict[str, Any]], out_dir: str) -> None:
    """Entry point for ``torch.multiprocessing.spawn``: run every job, write ``rank{r}.json``."""
    from benchmarks.layout_scenarios import run_job  # noqa: PLC0415 (keeps this module light)
    init(rank, world, port)
    results = []
    try:
        for job in jobs:
            results.append(run_job(job, rank, world))
            dist.barrier()
    finally:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
        dist.destroy_process_group()
