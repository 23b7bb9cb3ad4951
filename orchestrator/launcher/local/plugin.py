"""The local backend's entry in the launcher registry (the config schema's ``BACKEND_PLUGINS`` names it for ``local``)."""

from __future__ import annotations

from pathlib import Path

from spec.config import RunConfig
from orchestrator.launcher.base import Launcher


def make_launcher(cfg: RunConfig, run_dir: Path) -> Launcher:
    """A local cluster of ``cluster.nodes`` + ``spare_nodes`` agents on this host."""
    from health.detectors.agent_silence import rule_for
    from orchestrator.launcher.local.launcher import LocalLauncher
    return LocalLauncher(cfg.cluster.nodes, cfg.cluster.spare_nodes, agent_timeout_s=cfg.health.agent_timeout,
                         silence=rule_for(cfg.health))


def net_fault_refusal(fault: str) -> str | None:
    """Namespaced local nodes need root and iproute2."""
    from orchestrator.netns import unavailable_reason
    reason = unavailable_reason()
    return None if reason is None else f"{fault} needs namespaced local nodes (root and iproute2): {reason}"
