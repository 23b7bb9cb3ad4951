"""`orchestrator probe`: run the health probes on this node and print a table or JSON.

Exit code 0 when nothing failed ('degraded' is a warning), 1 otherwise, so a pre-flight script or
the Slurm prolog can gate a launch on it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from health.probes.result import ProbeResult, any_failed
from spec.layout import checkpoint_root

if TYPE_CHECKING:
    from spec.config import RunConfig

KNOWN_PROBES = ("node", "gpu", "collective", "burn_in")


def node_name() -> str:
    """Slurm's name for this node when under srun (what --exclude needs), else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def checkpoint_dir_of(cfg: RunConfig | None) -> Path:
    """Where this run's checkpoints go: ``checkpoint.dir``, relative to ``runs/<name>/``."""
    if cfg is None:
        return Path("runs")
    return checkpoint_root(Path("runs") / cfg.name, cfg.checkpoint.dir)


def _one(name: str, cfg: RunConfig | None, checkpoint_dir: Path, node: str) -> list[ProbeResult]:
    if name == "node":
        from health.probes.node import probe_node
        return [probe_node(checkpoint_dir, node=node)]
    if name == "gpu":
        return [_gpu(cfg, node)]
    if name == "collective":
        from health.probes.collective import run_collective_probe
        world, backend = _collective_shape(cfg)
        return run_collective_probe(world, {r: node for r in range(world)}, 60.0, backend=backend)
    if name == "burn_in":  # the known-answer compute check a lemon node passes before it is let back in
        from health.probes.burn_in import compute_check, default_device
        return [compute_check(node, default_device())]
    raise ValueError(f"unknown probe {name!r}; valid probes are: {', '.join(KNOWN_PROBES)}")


def host_ranks(cfg: RunConfig) -> int:
    """Ranks that share one host's GPUs: every simulated node of the local backend is this host."""
    return cfg.cluster.world_size if cfg.cluster.backend == "local" else cfg.cluster.ranks_per_node


def _gpu(cfg: RunConfig | None, node: str) -> ProbeResult:
    """NVML's view of the GPUs; with ``cluster.device: cuda`` also torch's, so a CPU-only torch build or
    too few GPUs fail here with the same message the ranks would fail with."""
    from health.probes.gpu import probe_gpu
    if cfg is None or cfg.cluster.device != "cuda":
        return probe_gpu(node=node)
    result = probe_gpu(expected_count=cfg.cluster.slurm.gpus_per_node or host_ranks(cfg), node=node)
    from trainer.device import host_gap
    gap = host_gap("cuda", node, host_ranks(cfg))
    if gap is None:
        return result
    problems = [gap] + [p for p in result.evidence.get("problems", []) if isinstance(p, str)]
    return ProbeResult("gpu", node, "failed", {**result.evidence, "reason": gap, "problems": problems}, "gpu_error")


def _collective_shape(cfg: RunConfig | None) -> tuple[int, str]:
    """(ranks, backend): NCCL on CUDA with one rank per GPU (it refuses two ranks on one GPU), else gloo."""
    world = max(min(cfg.cluster.ranks_per_node, 8) if cfg is not None else 2, 2)
    if cfg is None or cfg.cluster.device == "cpu":
        return world, "gloo"
    from trainer.device import cuda_inventory
    gpus = cuda_inventory().count
    if gpus == 0 or (cfg.cluster.device == "auto" and gpus < host_ranks(cfg)):
        return world, "gloo"  # the ranks would train on CPU; a missing GPU under cuda is the gpu probe's
    return max(min(world, gpus), 1), "nccl"


def run_probes(cfg: RunConfig | None, probes: list[str], checkpoint_dir: str | Path | None = None
               ) -> list[ProbeResult]:
    """Run the named probes on this node, in order. A probe that raises is reported as failed with
    the error as evidence: one broken probe must not hide the others' results."""
    bad = [p for p in probes if p not in KNOWN_PROBES]
    if bad:
        raise ValueError(f"unknown probe(s) {bad}; valid probes are: {', '.join(KNOWN_PROBES)}")
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else checkpoint_dir_of(cfg)
    node, out = node_name(), []
    for name in probes:
        try:
            out.extend(_one(name, cfg, ckpt, node))
        except Exception as e:  # noqa: BLE001 - reported, not swallowed
            out.append(ProbeResult(name, node, "failed", {"error": f"{type(e).__name__}: {e}"}))
    return out


def _summary(r: ProbeResult) -> str:
    problems = r.evidence.get("problems") or r.evidence.get("slow_ranks") or r.evidence.get("failing_ranks")
    if problems:
        return "; ".join(map(str, problems)) if isinstance(problems, list) else str(problems)
    return str(r.evidence.get("reason") or r.evidence.get("error") or "")


def print_table(results: list[ProbeResult]) -> None:
    from rich.console import Console
    from rich.table import Table

    colour = {"ok": "green", "degraded": "yellow", "failed": "red", "skipped": "dim"}
    table = Table(title="health probes")
    for col in ("probe", "node", "verdict", "fault", "details"):
        table.add_column(col)
    for r in results:
        table.add_row(r.probe, r.node, f"[{colour[r.verdict]}]{r.verdict}[/]", r.fault_kind or "",
                      _summary(r))
    Console().print(table)


def results_json(results: list[ProbeResult]) -> list[dict[str, Any]]:
    return [r.to_json() for r in results]


def main(cfg: RunConfig | None, as_json: bool, probes: list[str] | None = None,
         checkpoint_dir: str | None = None) -> int:
    """Entry point for `orchestrator probe` (which loads and checks the config): probe, print, exit code."""
    names = probes or (list(cfg.health.probes) if cfg is not None else ["node", "gpu"])
    results = run_probes(cfg, names, checkpoint_dir)
    if as_json:
        json.dump(results_json(results), sys.stdout, indent=None)
        sys.stdout.write("\n")
    else:
        print_table(results)
    return 1 if any_failed(results) else 0
