"""The Slurm backend's entry in the launcher registry (the config schema's ``BACKEND_PLUGINS`` names it for ``slurm``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spec.config import RunConfig
from orchestrator.launcher.base import Launcher


def make_launcher(cfg: RunConfig, run_dir: Path) -> Launcher:
    """One warm allocation (``in_allocation``) or one sbatch job per attempt (``resubmit``)."""
    if cfg.cluster.slurm.recovery == "in_allocation":
        from slurm.alloc_launcher import SlurmAllocLauncher
        return SlurmAllocLauncher(cfg, run_dir)
    from slurm.launcher import SlurmLauncher
    return SlurmLauncher(cfg, run_dir)


def net_fault_refusal(fault: str) -> str | None:
    """Only the namespaced local Slurm cluster (slurm/local-cluster.sh) has links chaos may cut."""
    from slurm.local_cluster import net_fault_refusal as refusal
    return refusal(fault)


def burn_in(cfg: RunConfig, run_dir: Path, node: str) -> Any:
    """The burn-in's compute check on the node itself, through srun like the node probe."""
    from slurm.preflight import burn_in as srun_burn_in
    from spec.layout import checkpoint_root
    return srun_burn_in(node, cfg.cluster.slurm.partition, checkpoint_root(run_dir, cfg.checkpoint.dir))
