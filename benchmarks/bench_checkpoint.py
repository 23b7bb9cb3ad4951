"""Checkpoint cost: how long ``dcp.async_save`` blocks training against a synchronous ``dcp.save``.

Two gloo ranks (forked here) each hold the same model and AdamW state (a data-parallel replica, as the
trainer's DDP ranks do; DCP de-duplicates the replicated tensors across ranks). Sizes are of the whole
saved state, weights + both Adam moments (what a checkpoint writes), so "100 MB" is ~8.3 M fp32 params.
For each size and repeat: a synchronous save, an async save on a separate gloo process group (as
TORCH_NOTES prescribes: the background collective must not share the training group) whose blocking
part (staging, until ``async_save`` returns) and completion (``future.result()``) are timed separately,
and a load. Times are the slowest rank's (an all_reduce MAX), medians over repeats, files in a temp dir
on local disk. The machine is shared, so the async/sync ratio within one run is the number to quote.

Usage: .venv/bin/python benchmarks/bench_checkpoint.py [--sizes-mb 10,100,1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
import torch.multiprocessing as mp
from torch.distributed.checkpoint.state_dict import get_state_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, save_json, table  # noqa: E402

WORLD = 2
WIDTH = 1024  # each layer is WIDTH x WIDTH fp32 = 4 MiB of weights


def build(size_bytes: float) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A stack of linear layers whose weights + AdamW moments come to about ``size_bytes``."""
    params = max(1, int(size_bytes / 12))  # 4 B weight + 8 B Adam moments per parameter
    layers = max(1, round(params / (WIDTH * WIDTH)))
    width = WIDTH if params >= WIDTH * WIDTH else max(8, int(params ** 0.5))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False) for _ in range(layers)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()  # materialise exp_avg / exp_avg_sq
    return model, opt


def slowest(seconds: float) -> float:
    t = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def timed(fn: Any) -> tuple[float, Any]:
    dist.barrier()
    t0 = time.perf_counter()
    out = fn()
    return slowest(time.perf_counter() - t0), out


def one_size(size_mb: float, repeats: int, root: Path, ckpt_pg: Any) -> dict[str, Any] | None:
    model, opt = build(size_mb * 1e6)
    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd}
    nbytes = sum(p.numel() * 4 * 3 for p in model.parameters())
    sync, block, done, load, staged_call, staged_wait = [], [], [], [], [], []
    stager = DefaultStager(StagingOptions(use_pinned_memory=False, use_shared_memory=False,
                                          use_async_staging=True, use_non_blocking_copy=False))
    for i in range(repeats):
        d = root / f"{size_mb:g}-{i}"
        sync.append(timed(lambda: dcp.save(state, checkpoint_id=str(d / "sync")))[0])
        t_block, fut = timed(lambda: dcp.async_save(state, checkpoint_id=str(d / "async"), process_group=ckpt_pg))
        t0 = time.perf_counter()
        fut.result()
        done.append(t_block + slowest(time.perf_counter() - t0))
        block.append(t_block)
        t_call, resp = timed(lambda: dcp.async_save(state, checkpoint_id=str(d / "staged"), process_group=ckpt_pg,
                                                    async_stager=stager))
        staged_call.append(t_call)
        t0 = time.perf_counter()
        resp.staging_completion.result()  # training must wait here before its next optimizer step
        staged_wait.append(t_call + slowest(time.perf_counter() - t0))
        resp.upload_completion.result()
        load.append(timed(lambda: dcp.load(state, checkpoint_id=str(d / "sync")))[0])
        dist.barrier()
        if dist.get_rank() == 0:
            shutil.rmtree(d, ignore_errors=True)
    if dist.get_rank() != 0:
        return None
    med = statistics.median
    return {"size_mb": size_mb, "state_mb": round(nbytes / 1e6, 1), "sync_save_s": med(sync),
            "async_block_s": med(block), "async_total_s": med(done), "block_ratio": med(block) / med(sync),
            "load_s": med(load), "write_mb_s": round(nbytes / 1e6 / med(sync), 1),
            "bg_staging_call_s": med(staged_call), "bg_staging_ratio": med(staged_call) / med(sync),
            "bg_staging_until_staged_s": med(staged_wait)}


def worker(rank: int, port: int, sizes: list[float], repeats: int, root: str, out: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    ckpt_pg = dist.new_group(backend="gloo")
    rows = [one_size(s, repeats, Path(root), ckpt_pg) for s in sizes]
    if rank == 0:
        out.put(rows)
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes-mb", default="10,100,1000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir on local disk)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    print("machine:", machine(), flush=True)
    sizes = [float(x) for x in a.sizes_mb.split(",")]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-", dir=a.dir) as root:
        mp.start_processes(worker, args=(free_port(), sizes, a.repeats, root, q), nprocs=WORLD,
                           start_method="spawn", join=False)
        rows = q.get()
    print(table(rows, ["size_mb", "state_mb", "sync_save_s", "async_block_s", "async_total_s", "block_ratio",
                       "load_s", "write_mb_s", "bg_staging_call_s", "bg_staging_ratio", "bg_staging_until_staged_s"]))
    save_json(a.json, "checkpoint", {"args": vars(a), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
