"""Pre-flight health checks before every (re)launch: nodes that fail a probe are excluded.

On the local cluster every simulated node is this machine, so one node probe (the checkpoint directory
round trip, disk, memory, kernel log) and one GPU probe stand for all of them; the collective probe (when
listed in health.probes) runs one process per rank and names the slow or failing node; on Slurm the Slurm
launcher runs ``health.probe_entry`` on each allocated node with srun instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from health.probes.collective import run_collective_probe
from health.probes.gpu import probe_gpu
from health.probes.node import probe_node
from health.probes.result import ProbeResult
from spec.config import RunConfig
from orchestrator.journal import Journal
from spec.layout import checkpoint_root, rank_map


def _require_gpus(nodes: list[str], ranks_per_node: int) -> None:
    """``device: cuda`` on a host that cannot give every rank a GPU is a config error, not a bad node:
    end the run with the line each rank would fail with, instead of excluding healthy nodes."""
    from orchestrator.supervisor import Abort
    from trainer.device import host_gap
    gap = host_gap("cuda", ", ".join(nodes), len(nodes) * ranks_per_node)  # local nodes share this host
    if gap is not None:
        raise Abort(gap)


def make_preflight(cfg: RunConfig, run_dir: Path, journal: Journal,
                   collective: Callable[[list[str]], list[ProbeResult]] | None = None
                   ) -> Callable[[list[str]], list[str]]:
    """``collective``: the launcher's way to run the collective probe with each node's ranks on that node
    (namespaced local nodes: inside their namespaces, across the bridge); None: plain local processes."""
    ckpt_dir = checkpoint_root(run_dir, cfg.checkpoint.dir)
    expected_gpus = cfg.cluster.ranks_per_node if cfg.cluster.device == "cuda" else None

    def preflight(nodes: list[str]) -> list[str]:
        t0 = time.perf_counter()
        if cfg.cluster.device == "cuda":
            _require_gpus(nodes, cfg.cluster.ranks_per_node)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        results = []
        if "node" in cfg.health.probes:
            results.append(probe_node(ckpt_dir, node="local"))
        if "gpu" in cfg.health.probes:
            results.append(probe_gpu(expected_count=expected_gpus, node="local"))
        failed = [r for r in results if r.verdict == "failed"]
        bad = list(nodes) if failed else []
        if "collective" in cfg.health.probes and not bad:
            rpn = cfg.cluster.ranks_per_node
            coll = collective(nodes) if collective is not None else run_collective_probe(
                len(nodes) * rpn, rank_map(nodes, rpn), timeout_s=60.0)
            results += coll
            bad = sorted({r.node for r in coll if r.verdict == "failed" and r.node in nodes})
        journal.append("preflight", nodes=nodes, seconds=round(time.perf_counter() - t0, 3),
                       results=[{"probe": r.probe, "node": r.node, "verdict": r.verdict, "fault_kind": r.fault_kind}
                                for r in results])
        return bad

    return preflight
