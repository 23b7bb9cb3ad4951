"""The Slurm backend: one sbatch job (through submitit) per attempt, watched with squeue/sacct/scontrol.

The supervisor stays scheduler-agnostic: it asks for an attempt on named nodes, and this launcher turns
that into a job pinned to exactly those nodes (every other partition node is excluded), then translates
what Slurm says back into :class:`LauncherEvent`s: ``node_lost`` (NODE_FAIL, or a job node DOWN/NOT
RESPONDING), ``requeued`` (TIMEOUT/PREEMPTED, or ranks that checkpointed and exited 75 on the warning
signal) and ``job_ended``. Slurm queries are rate-limited to ``cluster.slurm.poll_interval_s``; the
exit markers the tasks leave in the run directory are read on every poll because they cost nothing.

The orchestrator owns requeue: jobs are submitted ``--no-requeue`` (sbatch_options), and ``stop()``
cancels the attempt's job whatever state it is in and returns only once squeue and sacct agree it is
gone, so no job of an ended attempt can run again behind the supervisor's back. A node is blamed only
on the controller's word: its state and reason now, or its event history (``sacctmgr show event``)
when it has already returned to service; never by its position in the job's node list.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import submitit

from spec.config import RunConfig
from orchestrator.launcher.base import LaunchSpec, Launcher, LauncherEvent
from orchestrator.launcher.base import free_port
from slurm import cmd
from slurm.hostlist import node_sort_key
from slurm.job import PREEMPTED_EXIT, RankTask, read_exit_codes, restart_marker_dir
from slurm.parsers import NODE_FAULT_STATES, SacctRecord, TERMINAL_STATES
from slurm.preflight import run_probes
from slurm.sbatch_options import executor_parameters
from spec.layout import checkpoint_root

ACTIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "REQUEUED", "RESIZING",
                           "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"})
REQUEUE_STATES = frozenset({"TIMEOUT", "PREEMPTED"})
QUEUED_AGAIN = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"})  # after it ran: Slurm requeued it
BLAME_WAIT_S = 10.0  # how long a NODE_FAIL waits for the controller's node event to reach accounting


def checkpointed_why(preempt_time: str | None, sigterm_seen: bool = False, requeue_on: bool = False) -> str:
    """What made the ranks checkpoint and exit 75, in words: the controller's PreemptTime (or the agents'
    SIGTERM) means a preemption, else the time-limit warning (USR2). Either way the job is not requeued
    under its id (requeue_on_preemption off, or Slurm's requeue failed): a new allocation follows."""
    if preempt_time is not None or sigterm_seen:
        at = f" at {preempt_time}" if preempt_time else ""
        why = "Slurm's requeue failed" if requeue_on else "requeue_on_preemption is off"
        return f"checkpointed on the preemption notice (SIGTERM{at}, exit 75); {why}: a new allocation"
    return "checkpointed on the time-limit warning (USR2, exit 75): a new allocation"


def preempt_time(job_id: str) -> str | None:
    """cmd.preempted_at, None when the controller does not answer now."""
    try:
        return cmd.preempted_at(job_id)
    except cmd.SlurmCommandError:
        return None


class SlurmLauncher(Launcher):
    name = "slurm"

    def __init__(self, cfg: RunConfig, run_dir: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg, self.run_dir, self.clock = cfg, Path(run_dir), clock
        self.scfg = cfg.cluster.slurm
        self.job_id: str | None = None
        self.attempt = -1
        self.job_nodes: list[str] = []
        self.marker_dir = self.base_marker_dir = self.run_dir
        self.ended = True
        self._reported: set[tuple[str, str]] = set()
        self._next_query = 0.0
        self._pool: list[str] = []
        self.submit_t: float | None = None
        self.job_start: datetime | None = None  # cluster local time, for the node event history
        self.gone: set[str] = set()  # job ids squeue and sacct both report finished
        self.ran = False  # the job was seen RUNNING (queued again after that: Slurm requeued it)
        self.restarts = 0  # Slurm's requeues of this attempt's job (requeue_on_preemption)
        self.requeue_asked = 0.0  # when we asked Slurm to requeue the preempted job (0: not asked)
        self.world = 0
        self.preempt_time: str | None = None  # the controller's PreemptTime of the job, once read
        self.cancelled_by_us: set[str] = set()

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

    def own_preflight(self) -> Callable[[list[str]], list[str]]:
        return self.preflight

    def preflight(self, nodes: list[str]) -> list[str]:
        """Run the health probes on each node through srun; the nodes whose probes failed."""
        return run_probes(nodes, self.scfg.partition, checkpoint_root(self.run_dir, self.cfg.checkpoint.dir))

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
        self.world = spec.world
        self.submit_t = time.time()
        return {"job_id": self.job_id, "master_port": port,
                "excluded": sorted(set(others) | set(self.scfg.exclude), key=node_sort_key),
                "submitted_t": self.submit_t}

    def _watch(self, job_id: str, attempt: int, folder: Path) -> None:
        self.job_id, self.attempt, self.ended = job_id, attempt, False
        self.marker_dir = self.base_marker_dir = folder / "exit"
        self.job_nodes, self._reported, self._next_query = [], set(), 0.0
        self.ran, self.restarts, self.requeue_asked = False, 0, 0.0
        self.job_start = datetime.now() - timedelta(seconds=2)  # refined from sacct once it started

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
        self.job_nodes, self.world = list(entry.nodes) or list(spec.nodes), spec.world
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
        if not ranks or self.scfg.requeue_on_preemption:  # Slurm may requeue it: its state decides
            return []
        if self.job_nodes and self._any_node_down():  # the controller is killing the job for a node:
            return []  # a node failure, which its state (NODE_FAIL) and blame decide, not a preemption
        return self._event("requeued", "checkpointed", state="CHECKPOINTED",
                           detail=f"ranks {ranks} {checkpointed_why(preempt_time(self.job_id))}", info={"ranks": ranks})

    def _check_slurm(self) -> list[LauncherEvent]:
        assert self.job_id is not None
        entry = cmd.squeue_job(self.job_id)
        events: list[LauncherEvent] = []
        if entry is not None and entry.nodes:
            self.job_nodes = list(entry.nodes)
        if entry is not None and entry.state == "RUNNING":
            self.ran = True
            events += self._event("job_started", "running", state="RUNNING", info={"nodes": self.job_nodes})
        if entry is not None and entry.state in QUEUED_AGAIN and self.ran:
            return events + self._requeued_by_slurm(entry.state)
        if self.scfg.requeue_on_preemption and self._requeue_preempted():
            return events  # until squeue shows it queued again
        if entry is not None and self.job_nodes:
            events += self._dead_nodes(self.job_nodes)
        if entry is not None and entry.state in ACTIVE_STATES:
            return events
        rec = cmd.sacct_job(self.job_id)
        if rec is None or not rec.terminal:
            return events
        return events + self._ended(rec)

    def _requeue_preempted(self) -> bool:
        """requeue_on_preemption: once every rank of a preempted job checkpointed (exit 75), ask Slurm
        to requeue it now (same id). Left alone, a job whose tasks end inside GraceTime ends COMPLETED
        and is never requeued (seen on the local cluster). True while that requeue is under way."""
        if self.requeue_asked:
            return time.monotonic() - self.requeue_asked < 30.0
        codes = read_exit_codes(self.marker_dir)
        if not self.world or sum(c == PREEMPTED_EXIT for c in codes.values()) < self.world:
            return False
        assert self.job_id is not None
        try:
            self.preempt_time = cmd.preempted_at(self.job_id)
            if self.preempt_time is None:
                return False  # the time-limit warning: an ordinary resubmission
            cmd.requeue(self.job_id)
        except cmd.SlurmCommandError:
            return False
        self.requeue_asked = time.monotonic()
        return True

    def _requeued_by_slurm(self, state: str) -> list[LauncherEvent]:
        """The job ran and is queued again under its id: Slurm requeued it (a preemption, with
        requeue_on_preemption). The same attempt: its next run's tasks leave markers of their own."""
        self.ran, self.requeue_asked = False, 0.0
        self.restarts += 1
        self.marker_dir = restart_marker_dir(self.base_marker_dir, self.restarts)
        self._reported = {k for k in self._reported if k[0] == "node_lost"}  # its next run reports anew
        return [LauncherEvent("requeued", t=time.time(), state=state,
                              detail=f"job {self.job_id} preempted and requeued by Slurm (run {self.restarts + 1})",
                              info={"job_id": self.job_id, "same_job": True, "restarts": self.restarts,
                                    "preempt_time": self.preempt_time,
                                    "evidence_source": "scontrol PreemptTime"})]

    def _any_node_down(self) -> bool:
        """Whether the controller has a node of this job down (ranks that checkpointed on its SIGTERM
        were killed for that node, not preempted); False when it cannot be asked."""
        try:
            return any(n.down for n in cmd.scontrol_nodes(self.job_nodes))
        except cmd.SlurmCommandError:
            return False

    def _dead_nodes(self, nodes: list[str]) -> list[LauncherEvent]:
        events: list[LauncherEvent] = []
        for n in cmd.scontrol_nodes(nodes):
            if n.down:
                state = "+".join((n.state, *n.flags))
                events += self._event("node_lost", n.name, node=n.name, state=state,
                                      detail=f"{n.name} is {state} in scontrol ({n.reason or 'no reason'})",
                                      info={"evidence_source": "scontrol", "reason": n.reason})
        return events

    def _ended(self, rec: SacctRecord) -> list[LauncherEvent]:
        events: list[LauncherEvent] = []
        nodes = list(rec.nodes) or self.job_nodes
        if rec.start is not None:
            self.job_start = rec.start
        if rec.state in NODE_FAULT_STATES and not any(k == "node_lost" for k, _ in self._reported):
            events += self._blamed(nodes, rec)
        checkpointed = PREEMPTED_EXIT in read_exit_codes(self.marker_dir).values()
        if rec.state in REQUEUE_STATES or (checkpointed and rec.state not in NODE_FAULT_STATES):
            events += self._event("requeued", "checkpointed", state=rec.state,
                                  detail=f"job {rec.job_id} ended {rec.state}; resubmit from the checkpoint")
        self.ended = True
        events += self._event("job_ended", "ended", state=rec.state,
                              detail=f"job {rec.job_id} {rec.state} exit {rec.exit_code}:{rec.exit_signal}",
                              info={"exit_code": rec.exit_code, "nodes": nodes})
        return events

    def _blamed(self, nodes: list[str], rec: SacctRecord) -> list[LauncherEvent]:
        """node_lost for each node the controller names; one with no node when it names none. The
        controller writes its node events to accounting a moment after acting, so ask a few times."""
        deadline = time.monotonic() + BLAME_WAIT_S
        found = self.blame(nodes, rec.end)
        while not found and time.monotonic() < deadline:
            time.sleep(0.5)
            found = self.blame(nodes, rec.end)
        if not found:
            return self._event("node_lost", "unknown", node=None, state=rec.state,
                               detail=f"job {rec.job_id} ended {rec.state}; the controller names no node "
                                      f"(none of {', '.join(nodes)} DOWN now or in its event history)",
                               info={"evidence_source": "none", "job_nodes": nodes})
        events: list[LauncherEvent] = []
        for node, ev in found.items():
            events += self._event("node_lost", node, node=node, state=str(ev.get("state")),
                                  detail=f"{node} {ev.get('state')} per {ev['evidence_source']} "
                                         f"({ev.get('reason') or 'no reason'}); job {rec.job_id} {rec.state}",
                                  info=ev)
        return events

    def blame(self, nodes: list[str], until: datetime | None = None) -> dict[str, dict[str, Any]]:
        """node -> evidence for each of ``nodes`` the controller says failed while the job ran: DOWN
        or not responding now (scontrol), else a DOWN/FAIL event in its history (sacctmgr)."""
        out: dict[str, dict[str, Any]] = {}
        try:
            for n in cmd.scontrol_nodes(nodes):
                if n.down:
                    out[n.name] = {"evidence_source": "scontrol", "state": "+".join((n.state, *n.flags)),
                                   "reason": n.reason}
        except cmd.SlurmCommandError:
            pass
        if out:
            return out
        since = self.job_start or datetime.now() - timedelta(hours=1)
        try:
            events = cmd.node_events(nodes, since - timedelta(seconds=1))
        except cmd.SlurmCommandError:
            return out
        for e in events:
            if e.node in nodes and e.dead and e.overlaps(since - timedelta(seconds=1), until):
                out.setdefault(e.node, {"evidence_source": "sacctmgr event", "state": e.state,
                                        "reason": e.reason, "event_start": str(e.start), "event_end": str(e.end),
                                        "by": e.user})
        return out

    def exit_codes(self) -> dict[int, int]:
        """rank -> exit code from the markers the tasks left (written even when telemetry was lost)."""
        return read_exit_codes(self.marker_dir) if self.job_id is not None else {}

    def cancelled_outside(self) -> str | None:
        """The job was cancelled by someone else (an admin's scancel): sacct says CANCELLED, we did not."""
        if self.job_id is None or self.job_id in self.cancelled_by_us:
            return None
        try:
            entry = cmd.squeue_job(self.job_id)
            state = entry.state if entry is not None else None
            rec = cmd.sacct_job(self.job_id) if state in (None, "CANCELLED", "COMPLETING") else None
        except cmd.SlurmCommandError:
            return None
        if state == "CANCELLED" or (rec is not None and rec.state == "CANCELLED"):
            who = rec.state_detail if rec is not None else ""
            return f"job {self.job_id} CANCELLED {who}".strip()
        return None

    def dump_stacks(self, pids: dict[int, int]) -> bool:
        """SIGUSR1 to every task of the job's steps through Slurm (the task passes it to its rank):
        the ranks may run on other hosts, so a pid they reported means nothing here."""
        if self.job_id is None or self.ended:
            return False
        try:
            cmd.signal_steps(self.job_id, "USR1")
        except cmd.SlurmCommandError:
            return False
        return True

    def lost_nodes(self, wait_s: float = 15.0) -> dict[str, dict[str, Any]]:
        """The attempt's nodes Slurm reports failed (now, or in its event history since the job started),
        with the evidence, waiting up to ``wait_s`` for it.

        Telemetry sees a dead node first (its ranks go silent) but cannot say which machine failed;
        the controller notices within SlurmdTimeout, so a hang can be confirmed as a node failure.
        """
        deadline = time.monotonic() + wait_s
        while True:
            down = self.blame(self.job_nodes)
            if down or time.monotonic() >= deadline:
                return {n: down[n] for n in sorted(down, key=node_sort_key)}
            time.sleep(0.5)

    # ---- stopping ----------------------------------------------------------------------------------
    def stop(self, grace_s: float = 3.0) -> None:
        """Cancel the attempt's job whatever its state (ended, requeued, pending) and return once squeue
        and sacct agree it is gone: only then may the next attempt's ranks start."""
        if self.job_id is None or self.job_id in self.gone:
            return
        self.cancelled_by_us.add(self.job_id)
        deadline = time.monotonic() + grace_s + 60.0
        while True:
            if not self._released():
                for signal in ("KILL", None):  # tasks first (submitit ignores SIGTERM), then the job
                    try:
                        cmd.scancel(self.job_id, signal)
                    except cmd.SlurmCommandError:
                        pass
            if self._released() or time.monotonic() >= deadline:
                break
            time.sleep(0.25)
        self.ended = True
        if self._released():
            self.gone.add(self.job_id)

    def _released(self) -> bool:
        """squeue no longer runs it (gone, or only 'completing' on nodes that are dead anyway) and
        sacct has its final, terminal record: a requeued or pending job is not released."""
        assert self.job_id is not None
        try:
            entry = cmd.squeue_job(self.job_id)
            if entry is not None and entry.state in ACTIVE_STATES:
                return False
            if entry is not None and entry.state == "COMPLETING" and entry.nodes and \
                    not all(n.down for n in cmd.scontrol_nodes(list(entry.nodes))):
                return False
            rec = cmd.sacct_job(self.job_id)
            return rec is not None and rec.state in TERMINAL_STATES
        except cmd.SlurmCommandError:
            return False

    def cancel_jobs(self, job_ids: list[str]) -> list[str]:
        """Cancel each of ``job_ids`` Slurm still holds (running, pending, requeued) and wait until squeue
        and sacct agree it is gone; the ids that were still there. Used by cancel and resume so that
        every job the journal names is accounted for."""
        live: list[str] = []
        for job_id in dict.fromkeys(job_ids):
            try:
                entry = cmd.squeue_job(job_id)
            except cmd.SlurmCommandError:
                entry = None
            if entry is None or entry.state not in ACTIVE_STATES | {"COMPLETING"}:
                continue
            live.append(job_id)
            keep = (self.job_id, self.ended, self.gone)
            self.job_id, self.ended, self.gone = job_id, False, set()
            self.stop()
            self.job_id, self.ended, self.gone = keep
        return live

    def close(self) -> None:
        """Nothing is held between calls: every query is a fresh Slurm command."""
