"""The launcher registry: ``cluster.backend`` -> the backend's plugin module, named in the config schema
(``BACKEND_PLUGINS``), imported only when chosen. A plugin module exposes
``make_launcher(cfg, run_dir) -> Launcher`` and may expose ``burn_in(cfg, run_dir, node) -> ProbeResult`` (the compute check on the node itself)
and ``net_fault_refusal(fault) -> str | None``
(why its nodes cannot take a partition or slow_link fault; absent: they cannot). Nothing here knows any
backend by name."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from spec.config import BACKEND_PLUGINS, RunConfig
from orchestrator.launcher.base import Launcher


def plugin(backend: str) -> ModuleType:
    return importlib.import_module(BACKEND_PLUGINS[backend])


def make_launcher(cfg: RunConfig, run_dir: Path) -> Launcher:
    """The launcher of the run's backend."""
    launcher: Launcher = plugin(cfg.cluster.backend).make_launcher(cfg, run_dir)
    return launcher


def burn_in(cfg: RunConfig, run_dir: Path, node: str) -> Any:
    """The burn-in's known-answer compute check run on ``node`` itself by the backend (a ProbeResult);
    None when the backend's plugin has none (its nodes are this host: the caller runs the check here)."""
    run = getattr(plugin(cfg.cluster.backend), "burn_in", None)
    return None if run is None else run(cfg, run_dir, node)


def net_fault_refusal(backend: str, fault: str) -> str | None:
    """Why ``backend``'s nodes cannot take the network fault ``fault`` now; None when they can."""
    refusal = getattr(plugin(backend), "net_fault_refusal", None)
    if refusal is None:
        return f"{fault} needs nodes in their own network namespaces; the {backend} backend has none"
    why: str | None = refusal(fault)
    return why
