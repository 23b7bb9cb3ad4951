"""Checkpoint cost: how long ``dcp.async_save`` blocks training against a synchronous ``dcp.save``.

Two gloo ranks (forked here) each hold the same model and AdamW state (a data-parallel replica, as the
trainer's DDP ranks do; DCP de-duplicates the replicated tensors across ranks). Sizes are of the whole
saved state, weights + both Adam moments (what a checkpoint writes), so "100 MB" is ~8.3 M fp32 params.
For each size and repeat: a synchronous save, an async save on a separate gloo process group (as
TORCH_NOTES prescribes: the background collective must not share the training group) whose blocking
part (staging, until ``async_save`` returns) and completion (``future.result()``) are timed separately,
and a load. Times are the slowest rank's (an all_reduce MAX), medians over repeats, files in a temp dir
on local disk. The machine is shared, so the async/sync ratio within one run is the number to quote.

On a CUDA machine it also measures staging from GPU memory (``--gpu-sizes-gb``, default 1,10; one rank):
the state lives on the GPU and ``async_save`` copies it out through the trainer's background stager, into
pinned host buffers (allocated and pinned at the first save, reused by the next) and, for comparison,
into pageable memory. ``until_staged_s`` is what the next optimizer step waits for.

``loop_wait_s`` is what the training loop actually waits, as the trainer runs it: the ``async_save`` call
(background staging), then the next step's forward/backward (``forward_backward_s``, a batch of 16), then
the wait for the staging copy before the optimizer step; the call plus that last wait.

Usage: .venv/bin/python benchmarks/bench_checkpoint.py [--sizes-mb 10,100,1000] [--repeats 3]
       [--gpu-sizes-gb 1,10] [--gpu-repeats 2] [--no-gpu]
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
BATCH = 16  # rows of the forward/backward that runs between a save and the wait for its staging copy


def build(size_bytes: float, device: torch.device | None = None) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A stack of linear layers whose weights + AdamW moments come to about ``size_bytes``."""
    params = max(1, int(size_bytes / 12))  # 4 B weight + 8 B Adam moments per parameter
    layers = max(1, round(params / (WIDTH * WIDTH)))
    width = WIDTH if params >= WIDTH * WIDTH else max(8, int(params ** 0.5))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False, device=device) for _ in range(layers)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()  # materialise exp_avg / exp_avg_sq
    for p in model.parameters():
        p.grad = None  # not part of a checkpoint; on a GPU it would only take memory
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
    fb, loop_wait = [], []
    batch = torch.randn(BATCH, next(model.parameters()).shape[1])
    from trainer.checkpoint import ReusableStager
    stager = ReusableStager(lambda: DefaultStager(StagingOptions(
        use_pinned_memory=False, use_shared_memory=False, use_async_staging=True, use_non_blocking_copy=False)))
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
        fb_s, wait_s = loop_step(model, batch, state, d / "loop", ckpt_pg, stager)
        fb.append(fb_s)
        loop_wait.append(wait_s)
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
            "bg_staging_until_staged_s": med(staged_wait), "forward_backward_s": med(fb),
            "loop_wait_s": med(loop_wait), "loop_wait_ratio": med(loop_wait) / med(sync)}


def loop_step(model: torch.nn.Module, batch: torch.Tensor, state: dict[str, Any], where: Path, pg: Any,
              stager: Any) -> tuple[float, float]:
    """What the trainer's loop does around a checkpoint: ``async_save`` with background staging, the next
    step's forward/backward, then the wait for the staging copy before the optimizer may change the
    weights. Returns the slowest rank's (forward/backward seconds, seconds the loop waited in all: the
    call plus the wait after the forward/backward)."""
    t_call, resp = timed(lambda: dcp.async_save(state, checkpoint_id=str(where), process_group=pg,
                                                async_stager=stager))
    t0 = time.perf_counter()
    model(batch).square().mean().backward()  # reads the weights, writes only .grad: staging may go on
    t1 = time.perf_counter()
    resp.staging_completion.result()
    waited = t_call + slowest(time.perf_counter() - t1)
    fb_s = slowest(t1 - t0)
    resp.upload_completion.result()
    for p in model.parameters():
        p.grad = None
    return fb_s, waited


def gpu_one(size_gb: float, pinned: bool, repeats: int, root: Path, pg: Any) -> list[dict[str, Any]]:
    """Async saves of a GPU-resident state of ``size_gb`` with the trainer's stager; a row per repeat
    (the first pays for allocating and pinning the host buffers, later ones reuse them)."""
    from trainer.checkpoint import ReusableStager, background_stager
    dev = torch.device("cuda", torch.cuda.current_device())
    model, opt = build(size_gb * 1e9, dev)
    state = dict(zip(("model", "optim"), get_state_dict(model, opt)))
    nbytes = sum(p.numel() * 4 * 3 for p in model.parameters())
    stager = background_stager(cuda=True) if pinned else ReusableStager(lambda: DefaultStager(StagingOptions(
        use_pinned_memory=False, use_shared_memory=False, use_async_staging=True, use_non_blocking_copy=False)))
    rows = []
    for i in range(repeats):
        d = root / f"gpu-{size_gb:g}-{int(pinned)}-{i}"
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        resp = dcp.async_save(state, checkpoint_id=str(d), process_group=pg, async_stager=stager)
        call = time.perf_counter() - t0
        resp.staging_completion.result()
        staged = time.perf_counter() - t0
        resp.upload_completion.result()
        rows.append({"size_gb": size_gb, "host_memory": "pinned" if pinned else "pageable", "save": i + 1,
                     "state_gb": round(nbytes / 1e9, 2), "call_s": call, "until_staged_s": staged,
                     "copy_gb_s": round(nbytes / 1e9 / staged, 2), "until_written_s": time.perf_counter() - t0})
        shutil.rmtree(d, ignore_errors=True)
    stager.close()
    del model, opt, state
    torch.cuda.empty_cache()
    return rows


def gpu_rows(sizes_gb: list[float], repeats: int, root: Path) -> list[dict[str, Any]]:
    """One rank on GPU 0 (gloo group for DCP's planning collectives, as the trainer's async saves use)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    torch.cuda.set_device(0)
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        return [r for gb in sizes_gb for pinned in (True, False) for r in gpu_one(gb, pinned, repeats, root, None)]
    finally:
        dist.destroy_process_group()


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
    ap.add_argument("--gpu-sizes-gb", default="1,10", help="GPU staging sizes (only where CUDA is available)")
    ap.add_argument("--gpu-repeats", type=int, default=2)
    ap.add_argument("--no-gpu", action="store_true", help="skip the GPU staging part")
    ap.add_argument("--gpu-only", action="store_true", help="only the GPU staging part")
    a = ap.parse_args(argv)
    print("machine:", machine(), flush=True)
    rows: list[dict[str, Any]] = []
    if not a.gpu_only:
        rows = cpu_rows([float(x) for x in a.sizes_mb.split(",")], a.repeats, a.dir)
        print(table(rows, ["size_mb", "state_mb", "sync_save_s", "async_block_s", "async_total_s", "block_ratio",
                           "load_s", "write_mb_s", "bg_staging_call_s", "bg_staging_ratio",
                           "bg_staging_until_staged_s", "forward_backward_s", "loop_wait_s", "loop_wait_ratio"]))
    gpu: list[dict[str, Any]] = []
    if torch.cuda.is_available() and not a.no_gpu:
        with tempfile.TemporaryDirectory(prefix="bench-ckpt-gpu-", dir=a.dir) as root:
            gpu = gpu_rows([float(x) for x in a.gpu_sizes_gb.split(",")], a.gpu_repeats, Path(root))
        print(table(gpu, ["size_gb", "host_memory", "save", "state_gb", "call_s", "until_staged_s", "copy_gb_s",
                          "until_written_s"]))
    elif a.gpu_only:
        print("no GPU: nothing to measure")
    save_json(a.json, "checkpoint", {"args": vars(a), "rows": rows, "gpu_rows": gpu})
    return 0


def cpu_rows(sizes: list[float], repeats: int, where: str | None) -> list[dict[str, Any]]:
    """The two-rank CPU table (gloo, forked workers)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-", dir=where) as root:
        mp.start_processes(worker, args=(free_port(), sizes, repeats, root, q), nprocs=WORLD,
                           start_method="spawn", join=False)
        return list(q.get())


if __name__ == "__main__":
    sys.exit(main())
