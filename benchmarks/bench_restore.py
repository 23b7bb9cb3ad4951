"""Storage restore of the demo model on 4 gloo ranks: packed scalars against the old item-per-scalar format,
and DCP's own reader (one ``torch.load`` per tensor) against ``trainer.dcp_reader``'s one-pass reader.

    .venv/bin/python benchmarks/bench_restore.py [--repeats 3] [--world 4] [--no-freeze]

Every rank builds the demo's engine (``examples/local.yaml``), writes one checkpoint with
``trainer.checkpoint.save`` (scalars packed, ``trainer.packed_state``) and one as the trainer wrote them
before (``dcp.save`` of the flat state: one DCP item per hyper-parameter and step counter, per
parameter), then restores in turn, alternating (``old`` and ``packed``: the one-pass reader; ``packed-dcp-reader``:
the packed checkpoint through DCP's ``FileSystemReader``), as ``TrainLoop._restore`` does: choose (rank 0
verifies checksums), the engine's state template, ``checkpoint.load``, ``load_state_dict``. Prints rank
0's seconds per phase, median [min-max], and its ``torch.load`` calls per restore. Run under
``flock /tmp/bench.lock`` and quote the ratio within one run: the machine is shared.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spec.config import RunConfig  # noqa: E402
from trainer import checkpoint as ckpt  # noqa: E402
from trainer.engines import build_engine  # noqa: E402

LOADS = [0]
ONE_PASS = ckpt.OnePassReader
FORMATS = ("old", "packed", "packed-dcp-reader")


def _counting_load(real: Any) -> Any:
    def load(*a: Any, **k: Any) -> Any:
        LOADS[0] += 1
        return real(*a, **k)
    return load


def _save_old_format(root: Path, step: int, state: dict[str, Any], rank: int) -> None:
    """The checkpoint as written before packed scalars: DCP items only, then the commit marker."""
    path = ckpt.step_dir(root, step)
    path.mkdir(parents=True, exist_ok=True)
    dcp.save(state, checkpoint_id=str(path))
    if rank == 0:
        (path / ckpt.EXTRA).write_text(json.dumps({"step": step}))
        ckpt.write_manifest(path)
        (path / ckpt.COMMITTED).write_text(f"{step}\n")
    dist.barrier()


def _restore_once(root: Path, eng: Any, rank: int, dcp_reader: bool = False) -> dict[str, float]:
    ckpt.OnePassReader = dcp.FileSystemReader if dcp_reader else ONE_PASS  # type: ignore[misc]
    dist.barrier()
    LOADS[0] = 0
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    ref = ckpt.choose_for_load(root, rank)
    assert ref is not None
    t["choose"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    state = eng.state_dict()
    t["template"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    ckpt.load(ref, state, rank)
    t["load"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    eng.load_state_dict(state)
    t["apply"] = time.perf_counter() - t1
    t["total"] = time.perf_counter() - t0
    t["torch_loads"] = LOADS[0]
    return t


def worker(rank: int, world: int, root: str, port: int, repeats: int, q: Any, freeze: bool) -> None:
    torch.set_num_threads(1)
    torch.load = _counting_load(torch.load)  # type: ignore[assignment]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    raw = yaml.safe_load((ROOT / "examples" / "local.yaml").read_text())
    raw.pop("chaos", None)
    eng = build_engine(RunConfig.model_validate(raw), rank, world, torch.device("cpu"))
    ckpt.save(Path(root) / "packed", 10, eng.state_dict(), {"step": 10}, rank)
    _save_old_format(Path(root) / "old", 10, eng.state_dict(), rank)
    if freeze:
        gc.freeze()  # as trainer.rank_main does: the collector then skips what the rank was started with
    rows = [(fmt, _restore_once(Path(root) / fmt.split("-")[0], eng, rank, fmt.endswith("dcp-reader")))
            for _ in range(repeats) for fmt in FORMATS]
    if rank == 0:
        q.put(rows)
    dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--world", type=int, default=4)
    ap.add_argument("--freeze", action=argparse.BooleanOptionalAction, default=True,
                    help="gc.freeze() before the restores, as a trainer rank does (--no-freeze: as before)")
    a = ap.parse_args()
    load0 = os.getloadavg()[0]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with tempfile.TemporaryDirectory() as root:
        port = 20000 + os.getpid() % 20000
        procs = [ctx.Process(target=worker, args=(r, a.world, root, port, a.repeats, q, a.freeze)) for r in range(a.world)]
        for p in procs:
            p.start()
        rows = q.get()
        for p in procs:
            p.join()
    print(f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f}; rank 0 of {a.world}, {a.repeats} restores each, "
          f"gc {'frozen' if a.freeze else 'not frozen'}")
    for fmt in FORMATS:
        mine = [t for f, t in rows if f == fmt]
        cells = [f"{k} {statistics.median(v):.3f} [{min(v):.3f}-{max(v):.3f}]"
                 for k in mine[0] if k != "torch_loads" for v in [[t[k] for t in mine]]]
        print(f"{fmt:17s} torch.loads {int(mine[0]['torch_loads'])}  " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
