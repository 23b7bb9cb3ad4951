"""The Slurm backend: one sbatch job (through submitit) per attempt, watched with squeue/sacct/scontrol.

The supervisor stays scheduler-agnostic: it asks for an attempt on named nodes, and this launcher turns
that into a job pinned to exactly those nodes (every other partition node is excluded), then translates
what Slurm says back into :class:`LauncherEvent`s: ``node_lost`` (NODE_FAIL, or a job node DOWN/NOT
RESPONDING), ``requeued`` (TIMEOUT/PREEMPTED, or ranks that checkpointed and exited 75 on the warning
signal) and ``job_ended``. Slurm queries are rate-limited to ``cluster.slurm.poll_interval_s``; the
exit markers the tasks leave in the run directory are read on every poll because they cost nothing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import submitit

from orchestrator.config import RunConfig
from orchestrator.launcher.base import LaunchSpec, Launcher, LauncherEvent
from orchestrator.launcher.local import free_port
from slurm import cmd
from slurm.job import PREEMPTED_EXIT, RankTask, read_exit_codes
from slurm.parsers import NODE_FAULT_STATES, SacctRecord
from slurm.preflight import run_probes
from slurm.sbatch_options import executor_parameters

ACTIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "REQUEUED", "RESIZING",
                           "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"})
REQUEUE_STATES = frozenset({"TIMEOUT", "PREEMPTED"})


def node_sort_key(name: str) -> tuple[Any, ...]:
    """node2 before node10: the order nodes appear in Slurm's own host lists."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


class SlurmLauncher(Launcher):
    name = "slurm"

    def __init__(self, cfg: RunConfig, run_dir: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg, self.run_dir, self.clock = cfg, Path(run_dir), clock
        self.scfg = cfg.cluster.slurm
        self.job_id: str | None = None
        self.attempt = -1
        self.job_nodes: list[str] = []
        self.marker_dir = self.run_dir
        self.ended = True
        self._reported: set[tuple[str, str]] = set()
        self._next_query = 0.0
        self._pool: list[str] = []
        self.submit_t: float | None = None

    # ---- nodes -----------------------------------------------------------------------------------
    def _partition(self) -> list[Any]:
        return sorted(cmd.sinfo_nodes(self.scfg.partition), key=lambda n: node_sort_key(n.name))

    def pool(self) -> list[str]:
        """Usable partition nodes minus cluster.slurm.exclude; the last good answer if sinfo fails."""
        banned = set(self.cfg.cluster.slurm.exclude)
        try:
            self._pool = [n.name for n in self._partition() if n.usable and n.name not in banned]
        except cmd.SlurmCommandError:
            pass
        return list(self._pool)

    def drain(self, node: str, reason: str) -> bool:
        """Drain ``node`` so no later job (ours or anyone's) lands on it; only if the config asks."""
        if not self.scfg.drain_bad_nodes:
            return False
        cmd.drain(node, reason or "orchestrator: excluded")
        return True

    def preflight(self, nodes: list[str]) -> list[str]:
        """Run the health probes on each node through srun; the nodes whose probes failed."""
        return run_probes(nodes, self.scfg.partition, self.run_dir)

    # ---- one attempt -------------------------------------------------------------------------------
    def launch(self, spec: LaunchSpec) -> dict[str, Any]:
        others = [n.name for n in self._partition() if n.name not in spec.nodes]
        params = executor_parameters(self.cfg, others)
        params.update(nodes=len(spec.nodes), ntasks_per_node=spec.ranks_per_node,
                      srun_args=["--kill-on-bad-exit=1"])
        folder = self.run_dir / "slurm" / f"attempt-{spec.attempt}"
        port = free_port()
        task = RankTask(run_dir=str(spec.run_dir), attempt=spec.attempt, telemetry_addr=spec.telemetry_addr,
                        master_port=port, log_dir=str(spec.log_dir), marker_dir=str(folder / "exit"))
        executor = submitit.SlurmExecutor(folder=folder)
        executor.update_parameters(**params)
        job = executor.submit(task)
        self._watch(str(job.job_id), spec.attempt, folder)
        self.submit_t = time.time()
        return {"job_id": self.job_id, "master_port": port,
                "excluded": sorted(set(others) | set(self.scfg.exclude), key=node_sort_key),
                "submitted_t": self.submit_t}

    def _watch(self, job_id: str, attempt: int, folder: Path) -> None:
        self.job_id, self.attempt, self.ended = job_id, attempt, False
        self.marker_dir = folder / "exit"
        self.job_nodes, self._reported, self._next_query = [], set(), 0.0

    def attach(self, info: dict[str, Any], spec: LaunchSpec) -> bool:
        """Watch the journaled job again if Slurm still runs (or queues) it; never submits."""
        job_id = info.get("job_id")
        if not job_id:
            return False
        try:
            entry = cmd.squeue_job(str(job_id))
        except cmd.SlurmCommandError:
            return False
        if entry is None or entry.state not in ACTIVE_STATES:
            return False
        self._watch(str(job_id), spec.attempt, self.run_dir / "slurm" / f"attempt-{spec.attempt}")
        self.job_nodes = list(entry.nodes) or list(spec.nodes)
        return True

    # ---- watching ----------------------------------------------------------------------------------
    def _event(self, kind: str, key: str, **kw: Any) -> list[LauncherEvent]:
        """One event per (kind, key) per attempt: the supervisor must not see a node die twice."""
        if (kind, key) in self._reported:
            return []
        self._reported.add((kind, key))
        info = {"job_id": self.job_id, **kw.pop("info", {})}
        return [LauncherEvent(kind, t=time.time(), info=info, **kw)]  # type: ignore[arg-type]

    def poll(self) -> list[LauncherEvent]:
        if self.job_id is None or self.ended:
            return []
        events = self._check_markers()
        now = self.clock()
        if now < self._next_query:
            return events
        self._next_query = now + self.scfg.poll_interval_s
        try:
            events += self._check_slurm()
        except cmd.SlurmCommandError:
            pass  # a slow controller is not a fault of the run; ask again next interval
        return events

    def _check_markers(self) -> list[LauncherEvent]:
        codes = read_exit_codes(self.marker_dir)
        ranks = sorted(r for r, c in codes.items() if c == PREEMPTED_EXIT)
        if not ranks:
            return []
        return self._event("requeued", "checkpointed", state="CHECKPOINTED",
                           detail=f"ranks {ranks} checkpointed on the warning signal (exit 75)",
                           info={"ranks": ranks})

    def _check_slurm(self) -> list[LauncherEvent]:
        assert self.job_id is not None
        entry = cmd.squeue_job(self.job_id)
        events: list[LauncherEvent] = []
        if entry is not None and entry.nodes:
            self.job_nodes = list(entry.nodes)
        if entry is not None and entry.state == "RUNNING":
            events += self._event("job_started", "running", state="RUNNING", info={"nodes": self.job_nodes})
        if entry is not None and self.job_nodes:
            events += self._dead_nodes(self.job_nodes)
        if entry is not None and entry.state in ACTIVE_STATES:
            return events
        rec = cmd.sacct_job(self.job_id)
        if rec is None or not rec.terminal:
            return events
        return events + self._ended(rec)

    def _dead_nodes(self, nodes: list[str]) -> list[LauncherEvent]:
        events: list[LauncherEvent] = []
        for n in cmd.scontrol_nodes(nodes):
            if n.down:
                state = "+".join((n.state, *n.flags))
                events += self._event("node_lost", n.name, node=n.name, state=state,
                                      detail=f"{n.name} is {state} in scontrol ({n.reason or 'no reason'})")
        return events

    def _ended(self, rec: SacctRecord) -> list[LauncherEvent]:
        events: list[LauncherEvent] = []
        nodes = list(rec.nodes) or self.job_nodes
        if rec.state in NODE_FAULT_STATES:
            events += self._dead_nodes(nodes)
            if not any(e.kind == "node_lost" for e in events) and not any(k == "node_lost" for k, _ in self._reported):
                events += self._event("node_lost", nodes[0] if nodes else "?", node=nodes[0] if nodes else None,
                                      state=rec.state, detail=f"job {rec.job_id} ended {rec.state}")
        if rec.state in REQUEUE_STATES or PREEMPTED_EXIT in read_exit_codes(self.marker_dir).values():
            events += self._event("requeued", "checkpointed", state=rec.state,
                                  detail=f"job {rec.job_id} ended {rec.state}; resubmit from the checkpoint")
        self.ended = True
        events += self._event("job_ended", "ended", state=rec.state,
                              detail=f"job {rec.job_id} {rec.state} exit {rec.exit_code}:{rec.exit_signal}",
                              info={"exit_code": rec.exit_code, "nodes": nodes})
        return events

    def lost_nodes(self, wait_s: float = 15.0) -> list[str]:
        """The attempt's nodes Slurm reports DOWN/NOT_RESPONDING, waiting up to ``wait_s`` for it.

        Telemetry sees a dead node first (its ranks go silent) but cannot say which machine failed;
        the controller notices within SlurmdTimeout, so a hang can be confirmed as a node failure.
        """
        deadline = time.monotonic() + wait_s
        while True:
            try:
                down = [n.name for n in cmd.scontrol_nodes(self.job_nodes) if n.down]
            except cmd.SlurmCommandError:
                down = []
            if down or time.monotonic() >= deadline:
                return down
            time.sleep(0.5)

    # ---- stopping ----------------------------------------------------------------------------------
    def stop(self, grace_s: float = 3.0) -> None:
        """Kill the job's tasks at once (submitit ignores SIGTERM) and wait until Slurm lets go."""
        if self.job_id is None or self.ended:
            return
        for signal in ("KILL", None):
            try:
                cmd.scancel(self.job_id, signal)
            except cmd.SlurmCommandError:
                pass
        deadline = time.monotonic() + grace_s + 30.0
        while time.monotonic() < deadline and not self._released():
            time.sleep(0.25)
        self.ended = True

    def _released(self) -> bool:
        """Gone from the queue, or only still 'completing' on nodes that are dead anyway."""
        assert self.job_id is not None
        try:
            entry = cmd.squeue_job(self.job_id)
            if entry is None:
                return True
            if entry.state in ACTIVE_STATES:
                return False
            return all(n.down for n in cmd.scontrol_nodes(list(entry.nodes))) if entry.nodes else True
        except cmd.SlurmCommandError:
            return False

    def close(self) -> None:
        """Nothing is held between calls: every query is a fresh Slurm command."""
