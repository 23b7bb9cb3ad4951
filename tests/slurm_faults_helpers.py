"""Node faults the Slurm tests inject from outside a run, and the clean-up that undoes them.

Why a module: the in-allocation recovery test and the memory-tier test both lose one node by SIGKILLing
its warm agent and then another by killing its slurmd (``slurm/local-cluster.sh kill-node``, which also
SIGSTOPs the node's tasks); both must revive the killed node whatever happens, so that later tests find
four nodes. They wait for the run's own journal and status, never for a fixed time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "slurm" / "local-cluster.sh"


def journal(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def run_step(run_dir: Path) -> int:
    """The step the supervisor last reported in status.json (0 before it has one)."""
    try:
        return int(json.loads((run_dir / "status.json").read_text()).get("step") or 0)
    except (OSError, ValueError):
        return 0


def when(run_dir: Path, launches: int, step: int, deadline: float) -> dict[str, Any] | None:
    """The latest launch record once the run has made ``launches`` launches and reached ``step``."""
    while time.monotonic() < deadline:
        ls = [e for e in journal(run_dir) if e["event"] == "launch"]
        if len(ls) >= launches and run_step(run_dir) >= step:
            return ls[-1]
        time.sleep(0.1)
    return None


def kill_agent_then_slurmd(run_dir: Path, done: dict[str, Any], agent_after: tuple[int, int],
                           slurmd_after: tuple[int, int], timeout_s: float = 600) -> None:
    """SIGKILL the last node's agent once the run has made ``agent_after`` = (launches, step), then kill
    the slurmd of the (new) last node after ``slurmd_after``; records each node hit and when in ``done``
    (``agent_node``/``agent_t``, ``slurmd_node``/``slurmd_t``) for the test and the revive fixture."""
    deadline = time.monotonic() + timeout_s
    launch = when(run_dir, *agent_after, deadline)
    if launch is None:
        return
    node = launch["nodes"][-1]
    done["agent_node"], done["agent_t"] = node, time.time()
    os.kill(int(launch["agent_pids"][node]), signal.SIGKILL)
    launch = when(run_dir, *slurmd_after, deadline)
    if launch is None:
        return
    node = launch["nodes"][-1]
    done["slurmd_node"], done["slurmd_t"] = node, time.time()
    subprocess.run([str(SCRIPT), "kill-node", node], check=True, capture_output=True, timeout=60)


@pytest.fixture
def killed_nodes() -> Iterator[dict[str, Any]]:
    """What :func:`kill_agent_then_slurmd` hit; the node whose slurmd it killed is revived afterwards."""
    done: dict[str, Any] = {}
    yield done
    if done.get("slurmd_node"):
        subprocess.run([str(SCRIPT), "revive-node", done["slurmd_node"]], capture_output=True, timeout=180)
