"""The launcher registry: ``cluster.backend`` -> the backend's plugin module, named in the config schema
(``BACKEND_PLUGINS``), imported only when chosen. A plugin module exposes
``make_launcher(cfg, run_dir) -> Launcher``; nothing here knows any backend by name."""

from __future__ import annotations

import importlib
from pathlib import Path

from spec.config import BACKEND_PLUGINS, RunConfig
from orchestrator.launcher.base import Launcher


def make_launcher(cfg: RunConfig, run_dir: Path) -> Launcher:
    """The launcher of the run's backend."""
    plugin = importlib.import_module(BACKEND_PLUGINS[cfg.cluster.backend])
    launcher: Launcher = plugin.make_launcher(cfg, run_dir)
    return launcher
