"""The run directory's layout and the placement of ranks: one answer for every package.

The run directory is the source of truth (config copy, journal, checkpoints, per-rank logs, telemetry);
the supervisor, the ranks, the node agents, the probes and the Slurm tasks all find things in it by these
names, so they are derived here once. Pure: paths and dicts, no I/O beyond reading one small file.
"""

from __future__ import annotations

import json
from pathlib import Path

INTERVALS_FILE = "INTERVALS"  # the auto checkpoint intervals the supervisor chose (memory, storage)
DEFAULT_AUTO_STORAGE = 10  # steps between storage checkpoints under ``auto``, until costs are measured


def checkpoint_root(run_dir: Path | str, ckpt_dir: str | Path) -> Path:
    """``checkpoint.dir`` resolved against the run directory (absolute paths stay as they are)."""
    p = Path(ckpt_dir)
    return p if p.is_absolute() else Path(run_dir) / p


def logs_dir(run_dir: Path, attempt: int) -> Path:
    """Where one attempt's rank and agent logs go."""
    return Path(run_dir) / "logs" / f"attempt-{attempt}"


def rank_log_name(node: str | None, rank: int) -> str:
    """A rank's stdout+stderr log (stack dumps land here too)."""
    return f"{node}-rank{rank}.log"


def rank_exit_name(node: str | None, rank: int) -> str:
    """A rank's exit record (code, signal, stderr tail) beside its log."""
    return f"{node}-rank{rank}.exit.json"


def agent_log_name(node: str) -> str:
    return f"{node}-agent.log"


def rank_map(nodes: list[str], ranks_per_node: int) -> dict[int, str]:
    """rank -> node: ranks fill nodes in order, ``ranks_per_node`` each."""
    return {r: nodes[r // ranks_per_node] for r in range(len(nodes) * ranks_per_node)}


def rank_env(*, rank: int | str, world: int | str, local_rank: int | str, master_addr: str,
             master_port: int | str, run_dir: Path | str, attempt: int, node: str, node_index: int | str,
             local_world: int | None = None) -> dict[str, str]:
    """The environment ``trainer.rank_main`` reads: torch.distributed's variables and ours (the run
    directory, the attempt, where the rank runs). Telemetry's address and key file are added by the
    launcher that runs the hub."""
    env = {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(local_rank),
           "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port), "ORCH_RUN_DIR": str(run_dir),
           "ORCH_ATTEMPT": str(attempt), "ORCH_NODE": node, "ORCH_NODE_INDEX": str(node_index),
           "OMP_NUM_THREADS": "1"}
    if local_world is not None:
        env["LOCAL_WORLD_SIZE"] = str(local_world)
    return env


def read_intervals(run_dir: Path) -> tuple[int, int] | None:
    """The (memory, storage) intervals in ``INTERVALS``, or None when absent or unreadable."""
    try:
        raw = json.loads((Path(run_dir) / INTERVALS_FILE).read_text())
        return int(raw["memory"]), int(raw["storage"])
    except (OSError, ValueError, KeyError):
        return None
