"""The Slurm backend's in-allocation path: one job of ``nodes + spare_nodes`` nodes for the whole run,
one warm node agent per node, relaunches inside it.

Why: a resubmitted job pays the queue and a cold start on every failure (49 s of the 60 s a node failure
cost). Here ``submit`` asks once, through submitit, for every node including the spares, with
``--no-kill`` on the job and its step (a lost node shrinks the job instead of ending it; checked on the
local cluster: the other tasks of one multi-node ``srun --no-kill`` step keep running) and
``--no-requeue``. Each task is the local backend's node agent (:class:`slurm.job.AgentTask`): it warms up
once and dials the supervisor's hub (:mod:`orchestrator.launcher.agent_link`, authenticated with the run's
key). An attempt is then a ``launch`` command to the chosen agents; a crash, hang or NaN relaunch is a
re-fork; a node whose agent goes silent past its limit (``health.detectors.agent_silence``: a few times its
own largest recent heartbeat gap, at most ``health.agent_timeout_s``) is lost, one whose link breaks (EOF
or a reset: a killed agent's socket is closed by its kernel) at once, and a spare's agent gets its ranks: the controller's own verdict is looked up later and
reported as a ``node_verdict`` event, never waited for (fencing makes acting first safe).

A new allocation (excluding every bad node) is asked for only when this one cannot continue: it ended
(time limit, preemption, cancelled), ranks checkpointed on the time-limit warning, or fewer usable
nodes are left than the run needs.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from health.detectors.agent_silence import AgentSilence, SilenceRule, rule_for
from spec.config import RunConfig
from orchestrator.launcher.agent_link import AgentHub, Link
from orchestrator.launcher.base import LaunchSpec, Launcher, LauncherEvent
from trainer.telemetry_auth import create_or_load_key
from orchestrator.telemetry_server import endpoints
from slurm import cmd
from slurm.job import PREEMPTED_EXIT, AgentTask, node_address
from slurm.node_addr import is_loopback
from slurm.launcher import ACTIVE_STATES, SlurmLauncher, checkpointed_why, node_sort_key, preempt_time
from slurm.sbatch_options import executor_parameters

PROBE_DEADLINE_S = 200.0  # a placed probe rank's life: start-up budget + timeout + margin (run_placed_collective_probe)

ENDING_STATES = {"TIMEOUT": "time limit", "PREEMPTED": "preempted", "CANCELLED": "cancelled",
                 "NODE_FAIL": "node failure", "FAILED": "failed", "COMPLETED": "ended", "DEADLINE": "deadline",
                 "OUT_OF_MEMORY": "out of memory", "BOOT_FAIL": "boot failure"}


RELEASED = "RELEASED"  # written in the allocation's folder when the orchestrator lets it go


def released_teardown(marker: Path) -> list[str]:
    """Batch-script lines after the agents' step: with ``--no-kill`` a lost node's task makes srun exit
    non-zero and sacct would show the job FAILED even when the run recovered and completed. The job ends
    with srun's status unless the orchestrator released the allocation (its verdict, the marker); the
    step's own record still shows the lost task."""
    return ["rc=$?", f"if [ -e {shlex.quote(str(marker))} ]; then exit 0; fi", 'exit "$rc"']


def peer_host(peer: str) -> str:
    """The host part of a link's ``host:port`` peer (IPv6 brackets removed)."""
    return peer.rpartition(":")[0].strip("[]") if ":" in peer else peer


@dataclass
class RemoteAgent:
    """One node's agent as the supervisor sees it: its link, when it was last heard, what it reported."""

    node: str
    link: Link
    heard_t: float
    silence: AgentSilence = field(default_factory=lambda: AgentSilence(SilenceRule(5.0, 0.5, 0.0)))
    pid: int | None = None
    mem_port: int | None = None  # its memory tier's replication server (orchestrator.memtier_service)
    inbox: list[dict[str, Any]] = field(default_factory=list)

    def read(self, now: float) -> list[dict[str, Any]]:
        msgs = self.link.read()
        if msgs:
            self.heard_t = now
        self.silence.heard(now, msgs)
        for m in msgs:
            if m.get("ev") == "ready" and isinstance(m.get("pid"), int):
                self.pid = m["pid"]
                self.mem_port = m.get("mem_port") if isinstance(m.get("mem_port"), int) else None
        return msgs


class SlurmAllocLauncher(Launcher):
    name = "slurm"

    def __init__(self, cfg: RunConfig, run_dir: Path, grace_s: float = 3.0) -> None:
        self.cfg, self.run_dir, self.grace_s = cfg, Path(run_dir), grace_s
        self.scfg, self.timeout_s = cfg.cluster.slurm, cfg.health.agent_timeout
        self.silence_rule = rule_for(cfg.health)
        t = cfg.telemetry
        bind, adv = endpoints("slurm", t.bind_host, t.advertise_host, None)
        self.bind, self.adv = bind, adv
        self.hub = AgentHub(create_or_load_key(self.run_dir), bind, adv)
        self.jobs = SlurmLauncher(cfg, run_dir)  # cancel-and-confirm, blame, drain: the same rules
        self.job_id: str | None = None
        self.job_nodes: list[str] = []
        self.addr: dict[str, str] = {}
        self.agents: dict[str, RemoteAgent] = {}
        self.lost: dict[str, dict[str, Any]] = {}  # node -> why (this allocation)
        self.lost_in_attempt: set[str] = set()  # lost while running ranks: the supervisor decides on them
        self.dead_on_launch: list[str] = []
        self.bad: set[str] = set()  # lost or excluded: never used again
        self.excluded: set[str] = set()  # by the supervisor (its decision on a lost node is made)
        self.verdict_pending: set[str] = set()
        self.ending: str | None = None  # why the allocation cannot host another attempt
        self.current: list[str] = []
        self.finished: set[str] = set()
        self.codes: dict[int, int] = {}
        self._reported: set[tuple[str, str]] = set()
        self._next_query = 0.0
        self.submitted_t: float | None = None
        self.attempt = -1
        self.allocations = 0
        self.link_probes = 0  # collective probes placed on the agents so far (each its own directory)
        self.folder: Path | None = None  # the current allocation's submitit folder
        self.spec: LaunchSpec | None = None  # the running attempt, relaunched as-is after Slurm's requeue
        self.preempted = False  # the agents got Slurm's preemption notice (SIGTERM)
        self.awaiting_requeue = False  # requeue_on_preemption: the same job comes back, same attempt
        self.requeue_t = 0.0
        self.mem_owner: dict[int, str] = {}  # memory tier: rank → node it last ran on
        self.mem_partner: dict[str, str] = {}  # node → its ring partner last attempt

    # ---- the allocation ---------------------------------------------------------------------------
    def usable(self) -> list[str]:
        return [n for n in self.job_nodes if n in self.agents and n not in self.lost and n not in self.bad]

    def pool(self) -> list[str]:
        """The allocation's nodes whose agents are warm and heard, plus the nodes lost during the last
        attempt until the supervisor excludes them (it decides on them, as on the local backend, whose
        pool never shrinks); a new allocation first if this one cannot continue or has fewer usable
        nodes than the run needs."""
        if self.job_id is None or self.ending or len(self.usable()) < self.cfg.cluster.nodes:
            self._new_allocation()
        undecided = [n for n in self.lost_in_attempt if n not in self.excluded]
        return sorted(set(self.usable()) | set(undecided), key=node_sort_key)

    def _new_allocation(self) -> None:
        if self.job_id is not None:
            self._release()
        try:
            partition = [n for n in self.jobs._partition() if n.usable]
        except cmd.SlurmCommandError:
            partition = []
        want = self.cfg.cluster.nodes + self.cfg.cluster.spare_nodes
        self.bad |= set(self.lost) | self.lost_in_attempt  # a lost node is never asked for again
        avoid = self.bad | set(self.scfg.exclude)
        count = max(self.cfg.cluster.nodes, min(want, len([n for n in partition if n.name not in avoid])))
        params = executor_parameters(self.cfg, sorted(self.bad, key=node_sort_key))
        params.update(nodes=count, ntasks_per_node=1, srun_args=["--no-kill"])
        params["additional_parameters"] = {**params["additional_parameters"], "no-kill": True}
        params["cpus_per_task"] = self.cfg.cluster.ranks_per_node * (self.scfg.cpus_per_task or 1)  # its ranks
        folder = self.run_dir / "slurm" / f"allocation-{self.allocations}"
        params["teardown"] = released_teardown(folder / RELEASED)
        self.folder = folder
        self.allocations += 1
        executor = submitit.SlurmExecutor(folder=folder)
        executor.update_parameters(**params)
        job = executor.submit(AgentTask(run_dir=str(self.run_dir), hub_addr=self.hub.address))
        self.job_id, self.submitted_t, self.ending = str(job.job_id), time.time(), None
        self.hub.expect_job = self.job_id  # agents of earlier allocations are refused at the handshake
        self.preempted = self.awaiting_requeue = False
        self.job_nodes, self.agents, self.lost, self._reported = [], {}, {}, set()
        self._wait_for_agents(count)

    def _wait_for_agents(self, count: int, wait_s: float | None = None) -> None:
        """Until every node of the allocation has a warm agent on the hub (or the start-up timeout)."""
        deadline = time.monotonic() + (self.cfg.health.startup_timeout_s if wait_s is None else wait_s)
        while time.monotonic() < deadline:
            if not self.job_nodes or len(self.job_nodes) < count:
                self._query_job()
            self._accept()
            for a in self.agents.values():
                a.inbox += a.read(time.monotonic())
            if self.ending or (self.job_nodes and all(self.agents.get(n) and self.agents[n].pid
                                                      for n in self.job_nodes)):
                return
            time.sleep(0.2)

    def _query_job(self) -> None:
        assert self.job_id is not None
        try:
            entry = cmd.squeue_job(self.job_id)
        except cmd.SlurmCommandError:
            return
        if entry is not None and entry.nodes:
            self.job_nodes = sorted(entry.nodes, key=node_sort_key)
            for n in cmd.scontrol_nodes([n for n in self.job_nodes if n not in self.addr]):
                self.addr[n.name] = n.addr
        if entry is None or entry.state not in ACTIVE_STATES:
            state = entry.state if entry is not None else "ENDED"
            self.ending = self.ending or ENDING_STATES.get(state, state.lower())

    def _accept(self) -> None:
        now = time.monotonic()
        for node, link in self.hub.accept():
            old = self.agents.get(node)
            if old is not None:
                old.link.close("replaced by a new connection")
            self.agents[node] = RemoteAgent(node, link, now, AgentSilence(self.silence_rule, heard_t=now))
            if node in self.lost:  # declared lost (too slow to heartbeat), yet alive and dialing back: its
                link.send({"cmd": "stop", "grace_s": 0.5})  # fenced ranks would linger to the end of the job

    def _release(self, wait_s: float = 15.0) -> None:
        """Agents exit (the job then ends by itself, COMPLETED), else it is cancelled; either way
        confirmed gone (squeue and sacct agree) before returning."""
        if self.folder is not None:  # our verdict: a task lost on the way was handled (see released_teardown)
            (self.folder / RELEASED).write_text(f"{time.time()}\n")
        for a in self.agents.values():
            a.link.send({"cmd": "exit", "grace_s": 1.0})
        deadline = time.monotonic() + wait_s
        while self.job_id is not None and time.monotonic() < deadline and not self.ending:
            self._query_job()
            time.sleep(0.5)
        for a in self.agents.values():
            a.link.close("allocation released")
        if self.job_id is not None:
            self.jobs.cancel_jobs([self.job_id])
            self.jobs.gone.add(self.job_id)
        self.agents, self.current = {}, []

    # ---- one attempt ------------------------------------------------------------------------------
    def launch(self, spec: LaunchSpec) -> dict[str, Any]:
        self.current, self.finished, self.codes, self.attempt = list(spec.nodes), set(), {}, spec.attempt
        self.spec = spec
        self.dead_on_launch = [n for n in spec.nodes if n in self.lost or n not in self.agents]  # next poll
        master, source = self.master_addr(spec.nodes)
        port = self._ask(spec.nodes[0], {"cmd": "port"}, "port").get("port") or 29500 + spec.attempt % 1000
        mem = self._mem_plan(spec)
        for i, node in enumerate(spec.nodes):
            if node in self.dead_on_launch:
                continue
            ranks = list(range(i * spec.ranks_per_node, (i + 1) * spec.ranks_per_node))
            self.agents[node].link.send({"cmd": "launch", "spec": {
                "node": node, "node_index": i, "attempt": spec.attempt, "world": spec.world, "ranks": ranks,
                "master_addr": master, "master_port": port, "run_dir": str(spec.run_dir),
                "telemetry": spec.telemetry_addr, "log_dir": str(spec.log_dir),
                "host_rank_base": 0, "host_world": spec.ranks_per_node,  # one node per host
                "mem": mem.get(node)}})
            self.agents[node].silence.working(time.monotonic())  # it forks, maybe fetches copies
        spares = [n for n in self.usable() if n not in spec.nodes]
        return {"job_id": self.job_id, "hub": self.hub.address, "master_port": port, "master_addr": master,
                "master_addr_source": source,
                "spares": spares,
                "allocation": list(self.job_nodes), "submitted_t": self.submitted_t,
                "agent_pids": {n: self.agents[n].pid for n in spec.nodes if n in self.agents}}

    def _mem_plan(self, spec: LaunchSpec) -> dict[str, dict[str, Any]]:
        """Memory tier, as on the local backend: each node's ring partner, and where the copies of ranks
        that moved (a spare taking a lost node's place) are; only live agents' servers are asked."""
        from orchestrator.memtier_service import plan_launch
        addr: dict[str, tuple[str, int] | None] = {
            n: (peer_host(a.link.peer), a.mem_port) for n, a in self.agents.items()
            if a.mem_port and n not in self.lost and n not in self.bad and not a.link.closed}
        plan, self.mem_owner, self.mem_partner = plan_launch(
            list(spec.nodes), spec.ranks_per_node, self.mem_owner, self.mem_partner, addr)
        return plan

    def master_addr(self, nodes: list[str]) -> tuple[str, str]:
        """MASTER_ADDR for an attempt on ``nodes``, and where it came from: the address the first node's
        agent dialed the hub from (seen on its authenticated link, so it is that host's and reaches off
        it), unless that is loopback while some other node's agent is elsewhere; else the NodeAddr."""
        peers = {n: peer_host(self.agents[n].link.peer) for n in nodes if n in self.agents}
        first = peers.get(nodes[0])
        if first and (not is_loopback(first) or all(is_loopback(h) for h in peers.values())):
            return first, "agent link"
        return self.addr.get(nodes[0]) or node_address(nodes[0]), "NodeAddr"

    def attach(self, info: dict[str, Any], spec: LaunchSpec) -> bool:
        """``orchestrator resume`` after the supervisor died: the journaled allocation still runs, so
        listen on its hub's port again; its agents kept their ranks and dial back (node_agent.redial).
        True once every node of the attempt is back; False (a new allocation then) otherwise."""
        job_id, hub = info.get("job_id"), str(info.get("hub") or "")
        try:
            entry = cmd.squeue_job(str(job_id)) if job_id and hub else None
        except cmd.SlurmCommandError:
            entry = None
        if entry is None or entry.state != "RUNNING":
            return False
        try:
            new = AgentHub(self.hub.key, self.bind, self.adv, port=int(hub.rpartition(":")[2]))
        except (OSError, ValueError):
            return False
        self.hub.close()
        self.hub, self.hub.expect_job = new, str(job_id)
        self.job_id, self.submitted_t, self.ending = str(job_id), time.time(), None
        folders = sorted((self.run_dir / "slurm").glob("allocation-*"))
        self.allocations = len(folders)  # the next allocation gets a folder of its own
        self.folder = next((f for f in folders if any(f.glob(f"{job_id}_*"))), None)
        self.job_nodes = sorted(info.get("allocation") or entry.nodes, key=node_sort_key)
        for n in cmd.scontrol_nodes(self.job_nodes):
            self.addr[n.name] = n.addr
        self._wait_for_agents(len(self.job_nodes), wait_s=min(90.0, self.cfg.health.startup_timeout_s))
        if not all(self.agents.get(n) and self.agents[n].pid for n in spec.nodes):
            return False
        self.current, self.finished, self.codes, self.attempt, self.spec = list(spec.nodes), set(), {}, \
            spec.attempt, spec
        return True

    def _ask(self, node: str, command: dict[str, Any], answer: str, wait_s: float = 5.0) -> dict[str, Any]:
        """Send ``command`` to one agent and wait for its ``answer`` event (other messages are kept)."""
        a = self.agents.get(node)
        if a is None:
            return {}
        a.link.send(command)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not a.link.closed:
            for i, msg in enumerate(a.inbox):
                if msg.get("ev") == answer:
                    return a.inbox.pop(i)
            a.inbox += a.read(time.monotonic())
            time.sleep(0.005)
        return {}

    # ---- watching ---------------------------------------------------------------------------------
    def _event(self, kind: str, key: str, **kw: Any) -> list[LauncherEvent]:
        if (kind, key) in self._reported:
            return []
        self._reported.add((kind, key))
        return [LauncherEvent(kind, t=time.time(), info={"job_id": self.job_id, **kw.pop("info", {})},
                              **kw)]  # type: ignore[arg-type]

    def poll(self) -> list[LauncherEvent]:
        if self.job_id is None:
            return []
        self._accept()
        now = time.monotonic()
        if self.awaiting_requeue:
            return self._requeue_progress(now)
        events: list[LauncherEvent] = []
        for node in self.dead_on_launch:
            self.finished.add(node)
            events += self._event("node_lost", f"{node}-{self.attempt}", node=node, state="AGENT_LOST",
                                  detail=f"{node}: its agent was already lost", info=self.lost.get(node, {}))
        self.dead_on_launch = []
        for node, a in list(self.agents.items()):
            for msg in a.inbox + a.read(now):
                events += self._on_message(node, msg)
            a.inbox = []
            if node not in self.lost:
                events += self._check_alive(node, a, now)
        if self.current and self.finished >= set(self.current):
            events += self._event("job_ended", f"attempt-{self.attempt}", state="ENDED")
            self.current = []
        if now >= self._next_query:
            self._next_query = now + max(self.scfg.poll_interval_s, 2.0)
            events += self._scheduler_news()
        return events

    def _on_message(self, node: str, msg: dict[str, Any]) -> list[LauncherEvent]:
        ev = msg.get("ev")
        if ev == "ready":
            self.agents[node].pid = msg.get("pid")
        if ev == "preempt_notice":
            self.preempted = True
        if ev in ("ranks_done", "stopped") and node in self.current:
            self.finished.add(node)
            self.codes.update({int(r): int(c) for r, c in (msg.get("codes") or {}).items()})
            if PREEMPTED_EXIT in self.codes.values():  # checkpointed on the time-limit warning or preemption
                return self._checkpointed()
        return []

    def _checkpointed(self) -> list[LauncherEvent]:
        """Ranks saved and left on a signal. Preempted with requeue_on_preemption: Slurm will run this job
        again (same id); the agents leave so that it ends now, and the same attempt is relaunched into
        its new agents. Otherwise the allocation cannot continue: a new one, no restart budget spent."""
        if set(self.finished) < set(self.current):
            return []  # every node's ranks first: they all stop at one step
        assert self.job_id is not None
        when = preempt_time(self.job_id)  # the controller's word, not only the agents' SIGTERM
        if when is not None and self.scfg.requeue_on_preemption and self._requeue():
            return self._event("requeued", "slurm-requeue", state="PREEMPTED",
                               detail=f"allocation {self.job_id} preempted at {when}; ranks checkpointed "
                                      "(exit 75); requeued under the same id",
                               info={"same_job": True, "preempt_time": when, "evidence_source": "scontrol PreemptTime"})
        self.ending = self.ending or ("preempted" if when is not None or self.preempted else "time limit warning")
        return self._event("requeued", "checkpointed", state="CHECKPOINTED",
                           detail=f"ranks {checkpointed_why(when, self.preempted, self.scfg.requeue_on_preemption)}")

    def _requeue(self) -> bool:
        """The agents leave, and Slurm requeues the job now: left alone, a job whose tasks end inside
        GraceTime ends COMPLETED and is never requeued (seen on the local cluster)."""
        for a in self.agents.values():  # only the requeued job's agents count from here on
            a.link.send({"cmd": "exit", "grace_s": 1.0})
            a.pid = None
        try:
            cmd.requeue(str(self.job_id))
        except cmd.SlurmCommandError:
            return False
        self.awaiting_requeue, self.requeue_t = True, time.monotonic()
        self.current = []  # the attempt is not over: it runs again in the requeued job
        return True

    def _requeue_progress(self, now: float) -> list[LauncherEvent]:
        """Slurm requeued the preempted job: old agents leave (not lost nodes), the job pends, runs
        again, its new agents dial in; then the same attempt is launched into them. If Slurm ended the
        job instead of requeueing it, or it came back on other nodes, this is an ordinary requeue."""
        for node, a in list(self.agents.items()):
            if a.link.closed is not None:
                del self.agents[node]
            else:
                a.inbox += a.read(now)
        if now < self._next_query:
            return []
        self._next_query = now + max(self.scfg.poll_interval_s, 1.0)
        try:
            entry = cmd.squeue_job(str(self.job_id))
        except cmd.SlurmCommandError:
            return []
        if entry is None or entry.state not in ACTIVE_STATES | {"COMPLETING"}:  # not requeued after all
            self.awaiting_requeue = False
            self.ending = ENDING_STATES.get(entry.state, entry.state.lower()) if entry else "ended"
            return self._event("requeued", "ended", state=self.ending.upper(),
                               detail=f"allocation {self.job_id} {self.ending}, not requeued by Slurm")
        if entry.state == "RUNNING" and entry.nodes:
            self.job_nodes = sorted(entry.nodes, key=node_sort_key)
            for n in cmd.scontrol_nodes([n for n in self.job_nodes if n not in self.addr]):
                self.addr[n.name] = n.addr
        spec = self.spec
        ready = [n for n in self.job_nodes if n in self.agents and self.agents[n].pid]
        if spec is None or not self.job_nodes or len(ready) < len(self.job_nodes):
            return []
        self.awaiting_requeue = False
        if not set(spec.nodes) <= set(ready):  # elsewhere this time: the supervisor relaunches (no budget)
            return self._event("requeued", "moved", state="REQUEUED",
                               detail=f"allocation {self.job_id} requeued onto {', '.join(self.job_nodes)}")
        self._reported = {k for k in self._reported if k[0] == "node_verdict"}  # a later preemption reports again
        self.preempted = False
        self.launch(spec)
        return self._event("job_started", f"requeue-{self.job_nodes}", state="RUNNING",
                           detail=f"allocation {self.job_id} running again; attempt {spec.attempt} relaunched "
                                  f"into its agents after {now - self.requeue_t:.1f}s")

    def _check_alive(self, node: str, a: RemoteAgent, now: float) -> list[LauncherEvent]:
        """A closed link (EOF, reset, a bad line) is evidence at once; silence past the agent's limit too."""
        quiet, silent, how = a.silence.lost(now, idle=node not in self.current)
        if a.link.closed is None and not quiet:
            return []
        why = (f"node agent silent for {silent:.2f}s ({how})" if a.link.closed is None
               else f"node agent link lost: {a.link.closed}")
        self.lost[node] = {"evidence_source": "node agent", "detail": why, "silent_s": round(silent, 2),
                           "lost_mono": now}
        if a.link.closed is None:  # watched for its whole limit: the supervisor need not settle on it
            self.lost[node]["silence_limit_s"] = round(a.silence.limit_at(now)[0], 2)
        self.verdict_pending.add(node)
        a.link.close(why)
        if node not in self.current:  # a spare lost while idle: no longer offered; journaled mid-attempt
            return self._event("spare_lost", f"spare-{node}", node=node, state="LOST",
                               detail=f"{node}: {why}") if self.current else []
        self.finished.add(node)
        self.lost_in_attempt.add(node)
        return self._event("node_lost", f"{node}-{self.attempt}", node=node, state="AGENT_LOST", detail=f"{node}: {why}",
                           info=self.lost[node])

    def _scheduler_news(self) -> list[LauncherEvent]:
        """The job's state (an allocation that ended cannot continue) and the controller's later verdict
        on nodes we already moved away from."""
        events: list[LauncherEvent] = []
        was = self.ending
        self._query_job()
        if self.ending and not was and self.current:
            if self.ending in ("time limit", "preempted"):
                events += self._event("requeued", "ended", state=self.ending.upper(),
                                      detail=f"allocation {self.job_id}: {self.ending}")
            else:
                state = "CANCELLED" if self.ending == "cancelled" else self.ending.upper()
                events += self._event("job_ended", "allocation", state=state,
                                      detail=f"allocation {self.job_id} ended: {self.ending}")
        try:
            verdicts = [n for n in cmd.scontrol_nodes(sorted(self.verdict_pending)) if n.down]
        except cmd.SlurmCommandError:
            verdicts = []
        for n in verdicts:  # only the controller's view now: older events in its history are not about us
            self.verdict_pending.discard(n.name)
            lost_s = time.monotonic() - float(self.lost.get(n.name, {}).get("lost_mono", time.monotonic()))
            events += self._event("node_verdict", n.name, node=n.name, state="+".join((n.state, *n.flags)),
                                  detail=f"the controller's verdict on {n.name}, {lost_s:.1f}s after we moved on",
                                  info={"evidence_source": "scontrol", "reason": n.reason,
                                        "after_lost_s": round(lost_s, 2)})
        return events

    def lost_nodes(self, wait_s: float = 15.0) -> dict[str, dict[str, Any]]:
        """The attempt's nodes whose agents do not answer a ping within the agent timeout: the agents'
        own silence is the evidence (the controller's verdict comes later, see node_verdict)."""
        live = [n for n in self.current if n not in self.lost and n in self.agents]
        for n in live:
            self.agents[n].link.send({"cmd": "ping"})
        asked = time.monotonic()
        deadline = asked + min(wait_s, self.timeout_s + 1.0)
        while live and time.monotonic() < deadline:
            now = time.monotonic()
            for n in list(live):
                a = self.agents[n]
                a.inbox += a.read(now)
                if a.heard_t > asked or self._check_alive(n, a, now) or n in self.lost:
                    live.remove(n)
            time.sleep(0.01)
        return {n: self.lost[n] for n in self.current if n in self.lost}

    def exit_codes(self) -> dict[int, int]:
        return dict(self.codes)

    def dump_stacks(self, pids: dict[int, int]) -> bool:
        """SIGUSR1 to every rank, through its node's agent (the ranks may run on other hosts)."""
        sent = [self.agents[n].link.send({"cmd": "signal", "sig": "USR1"}) for n in self.current
                if n in self.agents and n not in self.lost]
        return any(sent)

    def cancelled_outside(self) -> str | None:
        self.jobs.job_id = self.job_id
        return self.jobs.cancelled_outside()

    def drain(self, node: str, reason: str) -> bool:
        """Excluded by the supervisor: never offered again; drained too when the config says so."""
        self.bad.add(node)
        self.excluded.add(node)
        return self.jobs.drain(node, reason)

    def own_preflight(self) -> Callable[[list[str]], list[str]]:
        return self.preflight

    def link_probe_runner(self, ranks_per_node: int) -> Callable[[list[str]], list[Any]] | None:
        """The pairwise collective probe with each node's ranks started by that node's warm agent (no
        job step: the agents hold the allocation), meeting through a FileStore in the run directory, so
        the measured traffic crosses the nodes' own links."""
        def run(nodes: list[str]) -> list[Any]:
            from health.probes.collective import run_placed_collective_probe
            from spec.layout import rank_map

            def start(rank: int, node: str, env: dict[str, str]) -> bool:
                a = self.agents.get(node)
                return a is not None and node not in self.lost and a.link.send(
                    {"cmd": "probe_worker", "env": env, "deadline_s": PROBE_DEADLINE_S})
            self.link_probes += 1
            workdir = self.run_dir / "probes" / f"collective-{self.link_probes:03d}"
            by_rank = rank_map(nodes, ranks_per_node)
            return run_placed_collective_probe([by_rank[r] for r in sorted(by_rank)], workdir, 60.0, start)
        return run

    def preflight(self, nodes: list[str], wait_s: float = 60.0) -> list[str]:
        """The node probe run by each chosen node's warm agent, all at once (no new job step, which a
        full allocation could not start), then the collective probe across them if configured: the nodes
        whose probe failed or did not answer."""
        bad = self._node_probes(nodes, wait_s)
        if "collective" in self.cfg.health.probes and not bad and len(nodes) > 1:
            results = self.link_probe_runner(self.cfg.cluster.ranks_per_node)(nodes)  # type: ignore[misc]
            bad = sorted({r.node for r in results if r.verdict == "failed" and r.node in nodes})
        return bad

    def _node_probes(self, nodes: list[str], wait_s: float) -> list[str]:
        asked = [n for n in nodes if n in self.agents and n not in self.lost
                 and self.agents[n].link.send({"cmd": "probe"})]
        for n in asked:  # the probe runs in the agent's loop (a disk round trip): it works meanwhile
            self.agents[n].silence.working(time.monotonic())
        verdicts: dict[str, str] = {}
        deadline = time.monotonic() + wait_s
        while len(verdicts) < len(asked) and time.monotonic() < deadline:
            for n in asked:
                a = self.agents[n]
                for msg in a.read(time.monotonic()):
                    if msg.get("ev") == "probe":
                        verdicts[n] = str(msg.get("verdict"))
                    else:
                        a.inbox.append(msg)
                if a.link.closed:
                    verdicts.setdefault(n, "failed")
            time.sleep(0.01)
        return [n for n in nodes if verdicts.get(n, "failed") == "failed"]

    def cancel_jobs(self, job_ids: list[str]) -> list[str]:
        return self.jobs.cancel_jobs(job_ids)

    # ---- stopping ---------------------------------------------------------------------------------
    def stop(self, grace_s: float | None = None) -> None:
        """Stop the attempt's ranks; the agents and the allocation stay for the next attempt. An agent
        that does not confirm is treated as lost (its ranks are fenced off anyway)."""
        grace = self.grace_s if grace_s is None else grace_s
        waiting = {n for n in self.current if n in self.agents and n not in self.lost
                   and self.agents[n].link.send({"cmd": "stop", "grace_s": grace})}
        deadline = time.monotonic() + grace + 3.0
        while waiting and time.monotonic() < deadline:
            now = time.monotonic()
            for n in list(waiting):
                a = self.agents[n]
                msgs = a.read(now)
                a.inbox += [m for m in msgs if m.get("ev") not in ("stopped", "ranks_done")]
                if any(m.get("ev") in ("stopped", "ranks_done") for m in msgs) or a.link.closed \
                        or self._check_alive(n, a, now) or n in self.lost:
                    waiting.discard(n)
            time.sleep(0.01)
        for n in waiting:
            self.lost[n] = {"evidence_source": "node agent", "detail": "did not stop its ranks in time"}
            self.lost_in_attempt.add(n)
        self.current = []

    def close(self) -> None:
        """The run is over: agents exit, the allocation is cancelled and confirmed gone."""
        self._release()
        self.hub.close()
