"""Pre-flight health checks before every (re)launch: nodes that fail a probe are excluded.

On the local cluster every simulated node is this machine, so one node probe (the checkpoint directory
round trip, disk, memory, kernel log) and one GPU probe stand for all of them; on Slurm the Slurm
launcher runs ``health.probe_entry`` on each allocated node with srun instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from health.probes.gpu import probe_gpu
from health.probes.node import probe_node
from orchestrator.config import RunConfig
from orchestrator.journal import Journal


def make_preflight(cfg: RunConfig, run_dir: Path, journal: Journal) -> Callable[[list[str]], list[str]]:
    ckpt = Path(cfg.checkpoint.dir)
    ckpt_dir = ckpt if ckpt.is_absolute() else run_dir / ckpt
    expected_gpus = cfg.cluster.ranks_per_node if cfg.cluster.device == "cuda" else None

    def preflight(nodes: list[str]) -> list[str]:
        t0 = time.perf_counter()
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        results = []
        if "node" in cfg.health.probes:
            results.append(probe_node(ckpt_dir, node="local"))
        if "gpu" in cfg.health.probes:
            results.append(probe_gpu(expected_count=expected_gpus, node="local"))
        failed = [r for r in results if r.verdict == "failed"]
        journal.append("preflight", nodes=nodes, seconds=round(time.perf_counter() - t0, 3),
                       results=[{"probe": r.probe, "verdict": r.verdict, "fault_kind": r.fault_kind}
                                for r in results])
        return list(nodes) if failed else []

    return preflight
