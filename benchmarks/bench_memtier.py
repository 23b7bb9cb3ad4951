"""Memory-tier cost: what a copy into /dev/shm blocks training for, what the writer thread takes, and
how long a restore from it takes, for the demo model and for a large state.

One process, no process group (one rank's view): the demo model (examples/local.yaml) trains for
``--steps`` steps with and without a snapshot after every step; the overhead is the step-time ratio
(median step with snapshot / median step without, the snapshot's blocking part included). For each
``--sizes-mb`` state (fp32 tensors of 64 MB each) it times the blocking copy, the background write
(serialize, CRC-32, write, rename) and the restore (check + load into place). Medians and [min-max]
over ``--repeats``. The machine is shared: print the load next to the numbers.

With ``--faults``: runs on the local cluster (tests' base config, 2 nodes x 2 ranks + spares), one with a
rank crash, a hang and a node loss, one where a node and its ring partner are lost together, and prints
per fault the tier restored from, its load time and the steps recomputed (steps done before the fault
minus the step restored).

Usage: .venv/bin/python benchmarks/bench_memtier.py [--steps 60] [--sizes-mb 100,1000] [--repeats 3]
       [--faults] [--no-costs]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
import yaml  # noqa: E402

from trainer import memstore  # noqa: E402
from spec.config import RunConfig  # noqa: E402
from trainer.fence import EpochGuard  # noqa: E402
from trainer.memtier import MemoryTier, copy_into, load_payload  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class NoTel:
    def event(self, *a: Any, **k: Any) -> None:
        pass


def spread(xs: list[float], scale: float = 1.0, fmt: str = ".1f") -> str:
    return f"{statistics.median(xs) * scale:{fmt}} [{min(xs) * scale:{fmt}}-{max(xs) * scale:{fmt}}]"


def tier(base: Path) -> MemoryTier:
    return MemoryTier(base, 0, 1, "bench", EpochGuard(None, 0), None, NoTel())


def demo_overhead(steps: int, base: Path) -> tuple[float, float, float, int, float, float]:
    """(median step s without, with snapshots, median block s, state bytes, median write s, restore s)
    for the demo model."""
    from trainer.engine import Engine
    cfg = RunConfig.model_validate(yaml.safe_load((ROOT / "examples/local.yaml").read_text()))
    eng = Engine(cfg, 0, 1, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.model.vocab_size, (cfg.train.global_batch // 4, cfg.model.seq_len), generator=g)
    mem = tier(base)
    times: dict[bool, list[float]] = {False: [], True: []}
    blocks: list[float] = []
    writes: list[float] = []
    for i in range(2 * steps):
        on = i % 2 == 1  # interleaved, so load changes hit both alike
        t0 = time.perf_counter()
        eng.forward_backward(x, x)
        eng.apply(1e-4)
        if on:
            if mem.last_write_s:
                writes.append(mem.last_write_s)
            blocks.append(mem.snapshot(i, eng.state_dict(), {"step": i}))
        times[on].append(time.perf_counter() - t0)
    mem.wait()
    size = memstore.list_copies(mem.dir)[0].stat().st_size
    t0 = time.perf_counter()
    chosen = mem.choose()
    assert chosen is not None
    eng.load_state_dict(copy_into(eng.state_dict(), load_payload(chosen.payload)["state"]))
    restore = time.perf_counter() - t0
    return (statistics.median(times[False]), statistics.median(times[True]), statistics.median(blocks), size,
            statistics.median(writes), restore)


def big_state(mb: int) -> dict[str, Any]:
    n = max(1, mb // 64)
    return {"model": {f"w{i}": torch.randn(16 << 20) for i in range(n)}, "optim": {"step": torch.tensor(1.0)}}


def big_costs(mb: int, base: Path) -> tuple[float, float, float]:
    """(blocking copy s, background write s, restore s) for a ``mb`` MB state."""
    state = big_state(mb)
    mem = tier(base)
    block = mem.snapshot(1, state, {"step": 1})
    mem.wait()
    write = mem.last_write_s
    t0 = time.perf_counter()
    chosen = mem.choose()
    assert chosen is not None
    copy_into(state, load_payload(chosen.payload)["state"])
    return block, write, time.perf_counter() - t0


FAULT_RUNS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "crash, hang, node loss": ({"chaos": [{"fault": "rank_crash", "step": 15, "rank": 3},
                                          {"fault": "hang", "step": 30, "rank": 2},
                                          {"fault": "node_failure", "step": 45, "node": 1}]},
                               ["rank_crash", "hang", "node_failure"]),
    "node + partner lost": ({"chaos": [{"fault": "node_failure", "step": 25, "node": 0},
                                       {"fault": "node_failure", "step": 25, "node": 1}],
                             "cluster": {"spare_nodes": 2}}, ["node and partner"]),
}


def fault_rows(repeats: int) -> list[str]:
    """Per fault: the tier its restore came from, load seconds, steps recomputed."""
    from tests.conftest import run_submit
    from tests.test_memtier import loads_after_injections  # each injected fault → the restore after it
    out = []
    for name, (over, labels) in FAULT_RUNS.items():
        for rep in range(repeats):
            with tempfile.TemporaryDirectory() as d:
                r = run_submit(Path(d), {**over, "health": {"hang_timeout_s": 6.0},  # no false hangs at load
                                         "checkpoint": {"memory": {"enabled": True}}})
                for label, fault, (_, load) in zip(labels, over["chaos"], loads_after_injections(r)):
                    out.append(f"| {label} | {rep + 1} | {load['tier']} | {load['load_s']:.3f} | "
                               f"{fault['step'] - int(load['step'])} | {r.status.get('goodput', 0):.3f} |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--sizes-mb", default="100,1000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--faults", action="store_true", help="also restore per tier on the local cluster")
    ap.add_argument("--no-costs", action="store_true", help="skip the in-process cost tables")
    ap.add_argument("--record", action="store_true",
                    help="write the demo's medians to benchmarks/measured.json (sim_at_scale's memory tier)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; copies under {memstore.BASE}")
    if args.faults:
        print("| fault | repeat | restored from | load s | steps recomputed | run goodput |")
        print("|---|---|---|---|---|---|")
        for row in fault_rows(args.repeats):
            print(row, flush=True)
        print()
    if args.no_costs:
        return 0
    with tempfile.TemporaryDirectory(dir=memstore.BASE.parent if memstore.BASE.parent.exists() else None) as d:
        rows = [demo_overhead(args.steps, Path(d) / f"demo{r}") for r in range(args.repeats)]
        off, on, block, size, write, restore = zip(*rows)
        ratio = [b / a for a, b in zip(off, on)]
        print("| demo model | state MB | step ms without | step ms with a copy every step | ratio | copy blocks ms "
              "| background write ms | restore ms |")
        print("|---|---|---|---|---|---|---|---|")
        print(f"| examples/local.yaml | {size[0] / 1e6:.1f} | {spread(list(off), 1e3)} | {spread(list(on), 1e3)} | "
              f"{spread(ratio, 1, '.3f')} | {spread(list(block), 1e3, '.2f')} | {spread(list(write), 1e3)} | "
              f"{spread(list(restore), 1e3)} |")
        if args.record:
            from benchmarks.measured import record
            record({"mem_block_s": statistics.median(block), "mem_write_s": statistics.median(write),
                    "mem_load_s": statistics.median(restore)},
                   f"bench_memtier (demo model, medians of {args.repeats}; load {os.getloadavg()[0]:.1f})")
        print()
        print("| state MB | copy blocks s | background write s | restore s (check + load) |")
        print("|---|---|---|---|")
        for mb in [int(s) for s in args.sizes_mb.split(",") if s]:
            res = [big_costs(mb, Path(d) / f"big{mb}-{r}") for r in range(args.repeats)]
            b, w, r_ = zip(*res)
            print(f"| {mb} | {spread(list(b), 1, '.3f')} | {spread(list(w), 1, '.3f')} | "
                  f"{spread(list(r_), 1, '.3f')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
