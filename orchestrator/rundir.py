"""Creating, locking and reading a run directory (the run's single source of truth)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

import yaml

from spec.config import RunConfig
from orchestrator.config_load import ConfigError, ConfigIssue, load_config_data

CONFIG_FILE = "config.yaml"
LOCK_FILE = "supervisor.lock"


class RunDirLocked(Exception):
    pass


def default_run_dir(cfg: RunConfig) -> Path:
    return Path("runs") / cfg.name


def create(run_dir: Path, cfg: RunConfig) -> Path:
    """Make a fresh run directory holding the resolved config; an existing run is never overwritten."""
    run_dir = run_dir.resolve()
    if (run_dir / CONFIG_FILE).exists():
        raise ConfigError([ConfigIssue("--run-dir", f"{run_dir} already holds a run; use "
                                       f"`orchestrator resume {run_dir}` or choose another --run-dir")])
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{CONFIG_FILE}.tmp"
    tmp.write_text(yaml.safe_dump(cfg.dump(), sort_keys=False))
    os.replace(tmp, run_dir / CONFIG_FILE)
    return run_dir


def load(run_dir: Path) -> RunConfig:
    p = run_dir / CONFIG_FILE
    if not p.exists():
        raise ConfigError([ConfigIssue("RUN_DIR", f"{run_dir} is not a run directory (no {CONFIG_FILE})")])
    return load_config_data(yaml.safe_load(p.read_text()), source=str(p))


def lock(run_dir: Path) -> IO[str]:
    """Hold an exclusive flock for the supervisor's lifetime; a second supervisor gets RunDirLocked."""
    f = open(run_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise RunDirLocked(f"{run_dir} is supervised by {holder}; stop it first "
                           f"(or wait for it to end) before resuming") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    return f
