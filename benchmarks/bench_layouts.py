"""Throughput, step time, peak memory and collective counts per hybrid layout on this machine.

Usage: ``.venv/bin/python benchmarks/bench_layouts.py [--steps N] [--max-world 8]``. Every layout runs the
tiny test model (d_model 32, 4 layers, seq 16, batch 8) on real gloo processes; the first step (shape
inference, lazy init) is excluded from the timings. Collective counts come from DTensor's
``CommDebugMode`` for one step: it sees DTensor/functional collectives (TP, SP, DTensor grad-norm
reductions) and c10d ops issued through the dispatcher; it reports counts, not bytes, and pipeline
send/recv (batched P2P) is not captured; with pp > 1 nothing is counted (under CommDebugMode a
PipelineStage's forward fails in torch 2.13).
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

from benchmarks.layout_harness import MODEL, spawn

LAYOUTS: dict[int, dict[str, dict[str, Any]]] = {
    1: {"single": {"dp_mode": "fsdp"}},
    2: {"dp2-fsdp": {"dp": 2}, "dp2-replicate": {"dp": 2, "dp_mode": "replicate"}, "tp2": {"tp": 2},
        "tp2-sp": {"tp": 2, "sp": True}, "pp2-1f1b": {"pp": 2}, "pp2-interleaved": {"pp": 2, "schedule": "interleaved_1f1b"}},
    4: {"dp2-tp2-sp": {"dp": 2, "tp": 2, "sp": True}, "dp2-pp2": {"dp": 2, "pp": 2},
        "tp2-pp2-sp": {"tp": 2, "pp": 2, "sp": True}},
    8: {"dp2-tp2-pp2-sp": {"dp": 2, "tp": 2, "pp": 2, "sp": True}},
}


def run(world: int, steps: int) -> list[tuple[str, list[dict[str, Any]]]]:
    layouts = LAYOUTS[world]
    jobs = [{"name": n, "cfg": c, "steps": steps, "comm": True} for n, c in layouts.items()]
    with tempfile.TemporaryDirectory() as tmp:
        res = spawn(world, jobs, tmp)
    return [(job["name"], [res[r][i] for r in range(world)]) for i, job in enumerate(jobs)]


def report(name: str, world: int, ranks: list[dict[str, Any]], batch: int = 8) -> str:
    step_s = max(sum(r["step_s"][1:]) / len(r["step_s"][1:]) for r in ranks)
    tok_s = batch * MODEL["seq_len"] / step_s
    rss = " ".join(f"{r['maxrss_mb']:.0f}" for r in ranks)
    comm = ", ".join(f"{k}={v}" for k, v in sorted(ranks[0].get("comm", {}).items())) or "-"
    return f"{name:<22} world={world}  step {step_s * 1e3:7.1f} ms  {tok_s:8.0f} tok/s  maxrss MiB/rank [{rss}]  comm/step(rank0): {comm}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--max-world", type=int, default=8)
    args = ap.parse_args()
    for world in sorted(LAYOUTS):
        if world > args.max_world:
            continue
        for name, ranks in run(world, args.steps):
            print(report(name, world, ranks), flush=True)


if __name__ == "__main__":
    main()
