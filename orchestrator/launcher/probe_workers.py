"""Ranks of the supervisor's collective probe, placed on this node by its agent.

Why: on Slurm's in-allocation path the agents hold the whole allocation, so the supervisor cannot start
a job step of its own to measure the nodes' links; the agent forks each probe rank and execs
``python -m health.probes.collective_worker`` (no state of the agent's), with the environment the
supervisor chose. The rank's stderr and exit code go into the probe's directory on the shared file
system, where the supervisor judges them as it judges local probe ranks; a rank past its deadline is
killed here.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from health.probes.collective import placed_exit_path
from orchestrator.launcher.child import become_child



class ProbeWorkers:
    """The probe ranks this agent started: pid → (exit file, deadline)."""

    def __init__(self) -> None:
        self.running: dict[int, tuple[Path, float]] = {}

    def start(self, cmd: dict[str, Any]) -> None:
        env = {str(k): str(v) for k, v in dict(cmd["env"]).items()}
        workdir, rank = Path(env["ORCH_PROBE_DIR"]), int(env["RANK"])
        pid = os.fork()
        if pid == 0:
            _exec_worker(env, workdir, rank)
        self.running[pid] = (placed_exit_path(workdir, rank), time.monotonic() + float(cmd.get("deadline_s", 300.0)))

    def reaped(self, pid: int, code: int) -> bool:
        """Record a probe rank's exit code; False if ``pid`` is not one of ours."""
        entry = self.running.pop(pid, None)
        if entry is None:
            return False
        tmp = entry[0].with_suffix(".tmp")
        tmp.write_text(str(code))
        tmp.replace(entry[0])  # the supervisor never reads half a code
        return True

    def expire(self) -> None:
        now = time.monotonic()
        for pid, (_, deadline) in self.running.items():
            if now > deadline:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _exec_worker(env: dict[str, str], workdir: Path, rank: int) -> None:
    """In the forked child: become the probe rank, never return."""
    try:
        err = os.open(workdir / f"rank{rank}.err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        become_child(os.open(os.devnull, os.O_WRONLY), err)
        os.environ.update(env)
        os.execv(sys.executable, [sys.executable, "-m", "health.probes.collective_worker"])
    finally:
        os._exit(127)
