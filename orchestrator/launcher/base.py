"""The one interface the supervisor knows for starting, watching and stopping the ranks of a run."""

from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from spec.layout import rank_map


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (rendezvous, hubs): every backend needs one."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class LaunchSpec:
    """One attempt: which nodes, how many ranks, where to report."""

    attempt: int
    nodes: list[str]
    ranks_per_node: int
    run_dir: Path
    telemetry_addr: str
    log_dir: Path

    @property
    def world(self) -> int:
        return len(self.nodes) * self.ranks_per_node

    def rank_map(self) -> dict[int, str]:
        return rank_map(self.nodes, self.ranks_per_node)


@dataclass(frozen=True)
class LauncherEvent:
    """Something the scheduler (not a rank) told us: a node vanished, the job ended or was requeued, the
    controller's later verdict on a node already moved away from (``node_verdict``: journaled only), or
    a rank exited (``rank_exit``: for a backend that sees exits itself; ranks also report their own exit
    through telemetry, and both reach the same handler)."""

    kind: Literal["node_lost", "job_ended", "requeued", "job_started", "node_verdict", "rank_exit"]
    node: str | None = None
    rank: int | None = None  # rank_exit: which rank, its exit code or signal, the tail of its stderr
    code: int | None = None
    signal: int | None = None
    stderr_tail: str = ""
    state: str | None = None  # e.g. COMPLETED, FAILED, NODE_FAIL, TIMEOUT, PREEMPTED
    detail: str = ""
    t: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


class Launcher(ABC):
    """Starts an attempt's ranks on named nodes, reports scheduler-level events, stops them."""

    name: str = "launcher"

    @abstractmethod
    def pool(self) -> list[str]:
        """Every node this launcher may use, spares included, in preference order."""

    @abstractmethod
    def launch(self, spec: LaunchSpec) -> dict[str, Any]:
        """Start the attempt; returns what to journal (pids, job id) so ``attach`` can find it again."""

    @abstractmethod
    def poll(self) -> list[LauncherEvent]:
        """Non-blocking: events since the last call."""

    @abstractmethod
    def stop(self, grace_s: float = 3.0) -> None:
        """Stop the attempt's ranks (if any still run) and wait until they are gone."""

    def attach(self, info: dict[str, Any], spec: LaunchSpec) -> bool:
        """Re-attach to an attempt started by an earlier supervisor; False if it is gone."""
        return False

    def drain(self, node: str, reason: str) -> bool:
        """The supervisor excluded ``node``: keep it from later jobs where the backend can (a scheduler
        drain); True if it did. A backend without a scheduler only stops offering it."""
        return False

    def own_preflight(self) -> Callable[[list[str]], list[str]] | None:
        """How this backend probes nodes itself before an attempt (on the nodes, through the scheduler
        or its agents), returning the failing ones; None: the supervisor's generic preflight runs."""
        return None

    def cluster_address(self) -> str | None:
        """This host's address on the network the launcher's nodes are on, if the launcher built that
        network (the local cluster's bridge); None lets the config and the backend's default decide."""
        return None

    def close(self) -> None:
        """Release what the launcher holds (the attempt must be stopped first)."""

    def cancel_jobs(self, job_ids: list[str]) -> list[str]:
        """Stop scheduler jobs an earlier supervisor of this run left behind; the ids still running."""
        return []

    def lost_nodes(self, wait_s: float = 15.0) -> dict[str, dict[str, Any]]:
        """node -> the scheduler's evidence, for the current attempt's nodes it says failed; waits up to
        ``wait_s`` for it. A backend without a scheduler has nothing to add to telemetry."""
        return {}

    def exit_codes(self) -> dict[int, int]:
        """rank -> exit code of the current attempt's ranks that have exited, where the backend keeps
        them outside telemetry (Slurm: exit markers); lets the supervisor read an end it did not hear."""
        return {}

    def link_probe_runner(self, ranks_per_node: int) -> Callable[[list[str]], list[Any]] | None:
        """A function that runs the pairwise collective probe with each node's ranks placed on that node
        (to name a slow link), or None where the backend cannot place probe ranks on its nodes."""
        return None

    def cancelled_outside(self) -> str | None:
        """Why, if the scheduler says someone else cancelled the current attempt; None otherwise."""
        return None

    def dump_stacks(self, pids: dict[int, int]) -> bool:
        """Ask every rank for its stack (faulthandler on SIGUSR1). Here the ranks are this host's
        processes (local backend); a scheduler backend signals through the scheduler instead."""
        import os
        import signal
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGUSR1)
            except (ProcessLookupError, PermissionError):
                return False
        return bool(pids)
