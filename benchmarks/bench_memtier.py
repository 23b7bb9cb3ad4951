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
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

from trainer import memlayout, memstore  # noqa: E402
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


class LegacyTier:
    """The first writer, for the 'before' figure: clone on the training path; in a thread torch.save
    into a buffer, CRC-32, write to /dev/shm, and the HMAC the agent computed to replicate it."""

    def __init__(self, base: Path) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.base, self.key, self.last_write_s = base, os.urandom(32), 0.0
        self._thread: Any = None

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def snapshot(self, step: int, state: dict[str, Any], extra: dict[str, Any]) -> float:
        import threading
        t0 = time.perf_counter()
        self.wait()

        def clone(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: clone(x) for k, x in v.items()}
            return v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v
        snap = {"state": clone(state), "extra": extra, "rng": torch.get_rng_state()}
        self._thread = threading.Thread(target=self._write, args=(step, snap), daemon=True)
        self._thread.start()
        return time.perf_counter() - t0

    def _write(self, step: int, snap: dict[str, Any]) -> None:
        import hashlib
        import hmac
        import io
        import zlib
        t0 = time.perf_counter()
        buf = io.BytesIO()
        torch.save(snap, buf)
        view = buf.getbuffer()
        zlib.crc32(view)
        path = self.base / f"step_{step:08d}.mem"
        path.write_bytes(view)
        del view
        hmac.new(self.key, path.read_bytes(), hashlib.sha256).digest()
        self.last_write_s = time.perf_counter() - t0


def demo_overhead(steps: int, base: Path, every: int = 1, legacy: bool = False
                  ) -> tuple[float, float, float, int, float, float]:
    """(mean step s without, with a copy every ``every`` steps, median block s, state bytes, median
    write s, restore s) for the demo model. Blocks of max(every, 8) steps with and without copies
    alternate (so load changes hit both alike); means, since the copy falls on one step in ``every``
    and its background write on the ones after it. ``legacy``: the first writer (restore not timed)."""
    eng, cfg = demo_engine()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.model.vocab_size, (cfg.train.global_batch // 4, cfg.model.seq_len), generator=g)
    mem: Any = LegacyTier(base) if legacy else tier(base)
    span = max(every, 8)
    times: dict[bool, list[float]] = {False: [], True: []}
    blocks: list[float] = []
    writes: list[float] = []
    for i in range(2 * steps):
        on = (i // span) % 2 == 1
        t0 = time.perf_counter()
        eng.forward_backward(x, x)
        eng.apply(1e-4)
        if on and i % every == 0:
            if mem.last_write_s:
                writes.append(mem.last_write_s)
            blocks.append(mem.snapshot(i, eng.memory_state(), {"step": i}))
        times[on].append(time.perf_counter() - t0)
    mem.wait()
    if legacy:
        return (statistics.mean(times[False]), statistics.mean(times[True]), statistics.median(blocks),
                max(p.stat().st_size for p in base.glob("*.mem")), statistics.median(writes or [0.0]), 0.0)
    size = memstore.list_copies(mem.dir)[0].stat().st_size
    t0 = time.perf_counter()
    chosen = mem.choose()
    assert chosen is not None
    eng.load_memory_state(load_payload(chosen)["state"])
    restore = time.perf_counter() - t0
    return (statistics.mean(times[False]), statistics.mean(times[True]), statistics.median(blocks), size,
            statistics.median(writes or [0.0]), restore)


def _timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def legacy_copy(state: dict[str, Any], d: Path, key: bytes) -> dict[str, float]:
    """The first writer's passes, kept here as the 'before' figure: clone, torch.save into a buffer,
    CRC-32, write to /dev/shm, and the agent's HMAC of the file when it replicated it."""
    import hashlib
    import hmac
    import io
    import zlib
    out: dict[str, float] = {}
    def clone(v: Any) -> Any:  # the first writer's _detach_copy
        if isinstance(v, dict):
            return {k: clone(x) for k, x in v.items()}
        return v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v
    out["clone (blocks)"], snap = _timed(lambda: clone(state))
    buf = io.BytesIO()
    out["torch.save"], _ = _timed(lambda: torch.save({"state": snap, "rng": torch.get_rng_state()}, buf))
    view = buf.getbuffer()
    out["crc32"], _ = _timed(lambda: zlib.crc32(view))
    path = d / "legacy.mem"
    out["shm write"], _ = _timed(lambda: path.write_bytes(view))
    del view
    out["agent hmac (replication)"], _ = _timed(lambda: hmac.new(key, path.read_bytes(), hashlib.sha256).digest())
    path.unlink()
    return out


def new_copy(state: dict[str, Any], d: Path, key: bytes) -> dict[str, float]:
    """This writer's passes, in the steady state: the writer thread prepares the next file (pages
    faulted in, views made) after each publish; the training path copies into it; the writer thread
    then makes the HMAC pass and publishes (trailer + rename)."""
    snap = {"state": state, "extra": {"step": 1}, "rng": torch.get_rng_state()}
    tensors: list[torch.Tensor] = []
    skeleton = memlayout.split(snap, tensors, [False])
    index, _, size = memlayout.plan(tensors, pickle.dumps(skeleton))
    out: dict[str, float] = {}
    out["prepare next file (writer)"], nxt = _timed(lambda: memlayout.Segment(d, size, index))
    out["copy into shm (blocks)"], (seg, index, skel, _, _) = _timed(lambda: memlayout.encode(d, 1, snap, nxt))
    header = memstore.CopyHeader(rank=0, step=1, epoch=0, t=time.time(), world=1, layout="bench",
                                 size=skel[0] + skel[1], index=index, skel=skel)
    out["hmac (writer)"], header = _timed(lambda: memstore.sealed(key, header, seg.payload(header.size)))
    out["publish (writer)"], path = _timed(lambda: memstore.publish(seg.path, header))
    del seg
    path.unlink()
    return out


def demo_engine() -> tuple[Any, Any]:
    import yaml
    from spec.config import RunConfig
    from trainer.engine import Engine
    cfg = RunConfig.model_validate(yaml.safe_load((ROOT / "examples/local.yaml").read_text()))
    return Engine(cfg, 0, 1, torch.device("cpu")), cfg


def demo_state(saved: str | None = None) -> dict[str, Any]:
    """The demo model's state (examples/local.yaml) after one optimizer step (Adam moments exist), or
    one saved by ``--save-demo-state`` (to measure where the config's libraries are not installed)."""
    if saved:
        return torch.load(saved, weights_only=False)
    eng, cfg = demo_engine()
    x = torch.randint(0, cfg.model.vocab_size, (2, cfg.model.seq_len), generator=torch.Generator().manual_seed(0))
    eng.forward_backward(x, x)
    eng.apply(1e-4)
    return eng.memory_state()


def to_device(v: Any, dev: str) -> Any:
    if isinstance(v, dict):
        return {k: to_device(x, dev) for k, x in v.items()}
    return v.to(dev) if isinstance(v, torch.Tensor) else v


def passes_table(states: dict[str, dict[str, Any]], base: Path, repeats: int) -> None:
    """Per copy, before (first writer) and after (this one), interleaved in one run: ms per pass."""
    key = os.urandom(32)
    print("| state | writer | pass | ms per copy |")
    print("|---|---|---|---|")
    for name, state in states.items():
        rows: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
        base.mkdir(parents=True, exist_ok=True)
        legacy_copy(state, base, key), new_copy(state, base, key)  # warm-up (first use of each path), untimed
        for _ in range(repeats):
            for label, fn in (("before", legacy_copy), ("after", new_copy)):
                base.mkdir(parents=True, exist_ok=True)
                for k, v in fn(state, base, key).items():
                    rows[label].setdefault(k, []).append(v)
                    rows[label].setdefault("total CPU", [])
                rows[label]["total CPU"].append(sum(x[-1] for k, x in rows[label].items() if k != "total CPU"))
        for label, passes in rows.items():
            for k, xs in passes.items():
                print(f"| {name} | {label} | {k} | {spread(xs, 1e3)} |", flush=True)


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
    copy_into(state, load_payload(chosen)["state"])
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
    ap.add_argument("--every", default="1", help="copy intervals (steps) for the demo table, e.g. 1,4")
    ap.add_argument("--sizes-mb", default="100,1000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--faults", action="store_true", help="also restore per tier on the local cluster")
    ap.add_argument("--no-costs", action="store_true", help="skip the in-process cost tables")
    ap.add_argument("--passes", action="store_true", help="only the per-pass table, before vs after")
    ap.add_argument("--device", default="cpu", help="where the state lives for --passes (cuda: GPU → shm)")
    ap.add_argument("--demo-state", help="a demo state saved by --save-demo-state (for --passes)")
    ap.add_argument("--save-demo-state", help="save the demo model's state here and exit")
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
    if args.save_demo_state:
        torch.save(demo_state(), args.save_demo_state)
        return 0
    if args.passes:
        shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        with tempfile.TemporaryDirectory(dir=shm) as d:
            states = {"demo model": demo_state(args.demo_state)}
            states.update({f"{mb} MB": big_state(mb) for mb in [int(x) for x in args.sizes_mb.split(",") if x]})
            states = {f"{k} ({args.device})": to_device(v, args.device) for k, v in states.items()}
            passes_table(states, Path(d), args.repeats)
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        return 0
    if args.no_costs:
        return 0
    with tempfile.TemporaryDirectory(dir=memstore.BASE.parent if memstore.BASE.parent.exists() else None) as d:
        print("| writer | state MB | copy every | step ms without | step ms with | ratio | copy blocks ms "
              "| background write ms | restore ms |")
        print("|---|---|---|---|---|---|---|---|---|")
        for every, legacy in [(int(e), lg) for e in args.every.split(",") for lg in (True, False)]:
            rows = [demo_overhead(args.steps, Path(d) / f"demo{every}-{legacy}-{r}", every, legacy)
                    for r in range(args.repeats)]
            off, on, block, size, write, restore = zip(*rows)
            ratio = [b / a for a, b in zip(off, on)]
            print(f"| {'before' if legacy else 'after'} | {size[0] / 1e6:.1f} | {every} | {spread(list(off), 1e3)} | "
                  f"{spread(list(on), 1e3)} | {spread(ratio, 1, '.3f')} | {spread(list(block), 1e3, '.2f')} | "
                  f"{spread(list(write), 1e3)} | {spread(list(restore), 1e3)} |", flush=True)
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
