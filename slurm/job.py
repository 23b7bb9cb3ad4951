"""What runs inside each Slurm task: set the rank's environment from Slurm's, then train.

submitit pickles a :class:`RankTask` (a module-level dataclass, so it pickles by reference) and calls it
in every task of the step. The task translates ``SLURM_*`` into the variables ``trainer.rank_main``
reads, sends the rank's output to the run directory like the local backend does, and leaves a small
exit marker so the launcher learns "checkpointed for requeue" (exit 75) without waiting for sacct.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from slurm.hostlist import expand

PREEMPTED_EXIT = 75  # mirrors trainer.rank_main.PREEMPTED_EXIT without importing torch here


class RankFailed(RuntimeError):
    """Raised so that submitit (and sacct) record a failed task when the rank returned non-zero."""

    def __init__(self, code: int) -> None:
        super().__init__(f"rank exited with code {code}")
        self.code = code


def node_address(node: str) -> str:
    """NodeAddr of ``node`` from the controller; 127.0.0.1 when it cannot be asked."""
    try:
        out = subprocess.run(["scontrol", "show", "node", node], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "127.0.0.1"
    for token in out.split():
        if token.startswith("NodeAddr="):
            return token.split("=", 1)[1] or "127.0.0.1"
    return "127.0.0.1"


def exit_marker(marker_dir: Path, rank: int) -> Path:
    return marker_dir / f"exit-rank{rank}.json"


def read_exit_codes(marker_dir: Path) -> dict[int, int]:
    """rank -> exit code of every rank of the attempt that returned (not those that crashed)."""
    out: dict[int, int] = {}
    for p in marker_dir.glob("exit-rank*.json"):
        try:
            rec = json.loads(p.read_text())
            out[int(rec["rank"])] = int(rec["code"])
        except (OSError, ValueError, KeyError):
            continue
    return out


@dataclass(frozen=True)
class RankTask:
    """One attempt's rank entry; every field is chosen by the launcher, the rest comes from Slurm."""

    run_dir: str
    attempt: int
    telemetry_addr: str
    master_port: int
    log_dir: str
    marker_dir: str

    def environment(self, slurm_env: Mapping[str, str], master_addr: str) -> dict[str, str]:
        """The variables ``trainer.rank_main`` reads, derived from Slurm's for this task."""
        return {
            "MASTER_ADDR": master_addr, "MASTER_PORT": str(self.master_port),
            "ORCH_RUN_DIR": self.run_dir, "ORCH_ATTEMPT": str(self.attempt),
            "ORCH_TELEMETRY_ADDR": self.telemetry_addr,
            "ORCH_TELEMETRY_KEY_FILE": os.path.join(self.run_dir, "telemetry.key"),  # a path, never the key
            "ORCH_NODE": slurm_env.get("SLURMD_NODENAME", "node0"),
            "ORCH_NODE_INDEX": slurm_env.get("SLURM_NODEID", "0"),
            "RANK": slurm_env["SLURM_PROCID"], "WORLD_SIZE": slurm_env["SLURM_NTASKS"],
            "LOCAL_RANK": slurm_env["SLURM_LOCALID"], "OMP_NUM_THREADS": "1",
        }

    def _redirect_output(self, node: str, rank: str) -> None:
        """The rank's stdout/stderr (and faulthandler stacks) go where the supervisor looks for them."""
        log_dir = Path(self.log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(log_dir / f"{node}-rank{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)

    def __call__(self) -> int:
        first = expand(os.environ["SLURM_JOB_NODELIST"])[0]
        env = self.environment(os.environ, node_address(first))
        os.environ.update(env)
        self._redirect_output(env["ORCH_NODE"], env["RANK"])
        from trainer.rank_main import main  # imported here: torch loads only inside the task
        code = int(main())
        marker = exit_marker(Path(self.marker_dir), int(env["RANK"]))
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"rank": int(env["RANK"]), "code": code, "node": env["ORCH_NODE"]}))
        if code != 0:
            raise RankFailed(code)
        return code
