"""The supervisor: one loop, one state machine, every fault and action in the journal.

It launches an attempt through a :class:`Launcher`, reads telemetry, notices dead ranks and nodes (from
process exits, never from a collective timeout), hangs (no progress within the timeout) and stragglers,
then stops the survivors, excludes bad nodes (a spare takes their place) and relaunches from the last
committed checkpoint, with a restart budget and exponential backoff. The loop is steered by its phase
(:class:`orchestrator.state.Phase`); how an attempt ended comes back as an :class:`Outcome`.
"""

from __future__ import annotations

import select
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from health.detectors.hardware import classify_exit
from health.detectors.lemon import LemonNodeStore
from orchestrator.auto_interval import AutoInterval
from health.detectors.hang import LivenessLimits, assess_stall
from health.detectors.comm_slowdown import CommSlowdown, CommSlowdownDetector
from health.detectors.straggler import StragglerDetector
from orchestrator.attempt import AttemptWatch
from spec.config import RunConfig
from orchestrator.goodput import GoodputMeter
from orchestrator.ground_truth import GroundTruth
from orchestrator.journal import Journal
from orchestrator.launcher.base import LaunchSpec, Launcher, LauncherEvent
from orchestrator.launcher.registry import burn_in as backend_burn_in
from orchestrator.link_probe import LinkProbe, LinkVerdict
from orchestrator.policy import Decision, Situation, decide
from orchestrator.hang_attribution import attribute_hang
from orchestrator.replay_events import on_replay
from orchestrator.run_events import RunEvents
from orchestrator.run_facts import (CheckpointSaved, Counted, Done, Fact, FaultFound, Journaled, Replayed, Restored,
                                    RolledBack, SlowComm, Snapshot, StepTimed, Suspect)
from orchestrator.snapshot import FaultRecord, RunSnapshot, write_status
from orchestrator.state import Outcome, Phase, PhaseMachine, RunState, StateMachine, backoff_s
from trainer.telemetry_auth import create_or_load_key
from orchestrator.telemetry_server import TelemetryServer, endpoints
from orchestrator.triage import Candidate, root_cause
from spec.faults import spec
from spec.layout import checkpoint_root, logs_dir
from trainer.fence import advance as advance_epoch, read_state

SETTLE_S = 0.4  # after the first sign of failure, wait this long for the root cause to show up


def open_lemon_store(cfg: RunConfig, run_dir: Path) -> LemonNodeStore | None:
    enabled = cfg.health.lemon_nodes
    if enabled is None:
        enabled = cfg.cluster.backend == "slurm"
    if not enabled:
        return None
    return LemonNodeStore(Path(cfg.health.lemon_db) if cfg.health.lemon_db else run_dir.parent / "nodes.db")


def placement_text(cfg: RunConfig, spec: LaunchSpec) -> str:
    """The rank → node map of an attempt, with each rank's (dp, pp, tp) coordinates."""
    from trainer.parallel.mesh import node_map
    lines = node_map(cfg, spec.world).splitlines()
    named = [spec.nodes[i] + line[line.index(":"):] if i < len(spec.nodes) else line for i, line in enumerate(lines)]
    return f"attempt {spec.attempt}: rank -> node\n  " + "\n  ".join(named)


def replica_groups(cfg: RunConfig, world: int) -> np.ndarray | None:
    """Each rank's data-parallel index when TP/PP make the ranks of a replica wait on each other (the
    straggler detector then blames the slowest of them, not its peers); None without model parallelism."""
    if cfg.parallel.tp * cfg.parallel.pp == 1:
        return None
    from trainer.parallel.mesh import rank_layout
    layout = rank_layout(cfg, world)
    return np.asarray([layout[r][0] for r in range(world)])


def shrunk_node_count(cfg: RunConfig, available: int) -> int:
    """The most nodes (≤ available) whose world size still fits the layout with a smaller data-parallel
    degree and the same global batch; 0 if none does (or dp is pinned in the config)."""
    par = cfg.parallel
    if par.dp is not None:
        return 0
    for n in range(min(available, cfg.cluster.nodes), 0, -1):
        world = n * cfg.cluster.ranks_per_node
        if world % (par.tp * par.pp):
            continue
        dp = par.dp_of(world)
        if cfg.train.global_batch % (dp * par.microbatches) == 0:
            return n
    return 0


class Abort(Exception):
    """An attempt cannot start (too few healthy nodes, GPUs missing): raised where the nodes are chosen,
    one or two calls below the loop. Everything that ends a running attempt is an :class:`Outcome`."""


class Supervisor:
    def __init__(self, cfg: RunConfig, run_dir: Path, launcher: Launcher, journal: Journal,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                 on_update: Callable[[RunSnapshot], None] | None = None) -> None:
        self.cfg, self.run_dir, self.launcher, self.journal = cfg, run_dir, launcher, journal
        self.clock, self.sleep, self.on_update = clock, sleep, on_update
        self.sm = StateMachine()
        self.phase = PhaseMachine()
        self.snap = RunSnapshot(name=cfg.name, total_steps=cfg.train.steps)
        self.meter = GoodputMeter(clock(), straggling_since=lambda: self.straggler.episode_since())
        self.relaunched_for: FaultRecord | None = None  # the last relaunch's fault (its lost steps may shrink)
        self.telemetry = self._open_telemetry()
        s = cfg.health.straggler
        self.straggler = StragglerDetector(s.window, s.factor, s.min_steps)
        self.comm = CommSlowdownDetector()  # every rank slower while compute is not: a slow link
        self.events = RunEvents(run_dir / "metrics.jsonl", cfg, self.straggler, self.comm, classify_exit)
        self.excluded: list[str] = []
        self.crashes: Counter[str] = Counter()
        self.attempt = -1
        self.say: Callable[[str], None] | None = None  # where to print the rank → node map at launch
        self.attached: LaunchSpec | None = None  # set by restore() when the last attempt still runs
        self.attached_job: Any = None
        self.requeues = 0  # relaunches after a time limit or preemption: not failures, no budget spent
        self.watch: AttemptWatch | None = None
        self.recovery_started_t: float | None = None
        self._last_status_t = 0.0
        self.preflight: Callable[[list[str]], list[str]] | None = None  # returns nodes that failed
        self.lemons = open_lemon_store(cfg, run_dir)
        self.auto_interval = AutoInterval(self)  # checkpoint.every_steps: auto (Young/Daly, re-tuned)
        self.ground_truth = GroundTruth(run_dir)
        probing = "collective" in cfg.health.probes  # the collective probe is opt-in, here as in pre-flight
        self.link_probe = LinkProbe(launcher.link_probe_runner(cfg.cluster.ranks_per_node) if probing else None)

    def _open_telemetry(self, port: int = 0, advertise: str | None = None) -> TelemetryServer:
        """The authenticated telemetry socket, on an address the nodes can reach (``telemetry`` config,
        else the launcher's network, else the backend's default); the key lives in the run directory."""
        t = self.cfg.telemetry
        bind, adv = endpoints(self.cfg.cluster.backend, t.bind_host, t.advertise_host,
                              self.launcher.cluster_address())
        return TelemetryServer(create_or_load_key(self.run_dir), bind, port, advertise=advertise or adv)

    # ---- state and bookkeeping ---------------------------------------------------------------
    def transition(self, to: RunState, reason: str = "") -> None:
        prev = self.sm.go(to)
        self.snap.state, self.snap.reason = to.value, reason
        self.journal.append("state", **{"from": prev.value, "to": to.value, "reason": reason})
        self.publish(force=True)

    def publish(self, force: bool = False) -> None:
        now = self.clock()
        snap = self.snap
        snap.updated_t, snap.wall_s = now, now - self.meter.t0
        if self.sm.terminal:  # the tail (last checkpoint, evaluation, shutdown) joins the breakdown
            self.meter.settle(now)
        snap.productive_s, snap.lost = self.meter.productive, self.meter.lost
        snap.goodput = self.meter.goodput(now)
        self.auto_interval.tick(now)
        snap.restarts = max(0, self.attempt - self.requeues)
        snap.attempt, snap.excluded_nodes = self.attempt, list(self.excluded)
        snap.telemetry_rejected = self.telemetry.rejected
        snap.telemetry_rejected_by = dict(self.telemetry.rejected_by)
        snap.telemetry_sources = dict(self.telemetry.sources)
        report = self.telemetry.rejection_report(now, force)
        if report is not None:  # one rate-limited line, never one per datagram
            self.journal.append("telemetry_rejected", **report)
        if self.on_update is not None:
            self.on_update(snap)
        if force or now - self._last_status_t >= 1.0:  # O(ranks) summaries once a second, not per tick
            if self.watch is not None:
                snap.heartbeat_age_max_s = self.watch.heartbeat_age_max(now)
            worst = self.straggler.worst_node()
            snap.straggler_score_max = worst[1] if worst else None
            write_status(self.run_dir, snap)
            self._last_status_t = now

    def record_fault(self, c: Candidate, detected_t: float, action: str, lost_steps: int = 0,
                     step: int | None = None) -> FaultRecord:
        """Journal a fault and its action. The latency starts at the injection when chaos injected it
        (ground truth), else at the supervisor's estimate of when the fault began."""
        inj = self.ground_truth.match(c.kind, detected_t)
        began = inj.t if inj is not None else c.t_fault
        f = FaultRecord(kind=c.kind, step=self.snap.step if step is None else step, rank=c.rank,
                        node=None if c.node is None else str(c.node),
                        detected_after_s=round(max(0.0, detected_t - began), 4), action=action,
                        lost_steps=lost_steps, t=detected_t, detail=str(c.evidence.get("detail", ""))[:300],
                        injected_t=None if inj is None else inj.t, detected_t=detected_t,
                        verdict=c.evidence.get("verdict"))
        self.journal.append("fault", kind=f.kind, step=f.step, rank=f.rank, node=f.node,
                            detected_after_s=f.detected_after_s, injected_t=f.injected_t, detected_t=detected_t,
                            injected=None if inj is None else {"index": inj.index, "fault": inj.fault,
                                                               "step": inj.step, "rank": inj.rank},
                            advice=spec(c.kind).advice, evidence=c.evidence)
        self.journal.append("action", action=action, kind=f.kind, step=f.step, rank=f.rank, node=f.node,
                            lost_steps=lost_steps, lost_s=round(f.lost_s, 4))
        self.snap.faults.append(f)
        self.snap.actions[action] = self.snap.actions.get(action, 0) + 1
        if self.lemons is not None and f.node and not spec(c.kind).in_step:
            if c.kind == "straggler":
                self.lemons.record_straggler(f.node, float(c.evidence.get("score", 0.0)), detected_t)
            else:
                self.lemons.record_fault(f.node, c.kind, detected_t)
        return f

    def apply(self, facts: list[Fact], now: float) -> None:
        """Apply what the telemetry handler concluded, in order."""
        for f in facts:
            match f:
                case Journaled(event, fields):
                    self.journal.append(event, **fields)
                case Snapshot(values):
                    for name, value in values.items():
                        setattr(self.snap, name, value)
                case Counted(name, n):
                    setattr(self.snap, name, getattr(self.snap, name) + n)
                case FaultFound(c, action, step):
                    self.record_fault(c, now, action, step=step)
                case Suspect(c):
                    assert self.watch is not None
                    self.watch.add_candidate(c, now)
                case StepTimed():
                    self._on_step_timed(f, now)
                case CheckpointSaved(_, save_s):
                    self.meter.lost.checkpoint += save_s
                    self.auto_interval.tuner.on_checkpoint(save_s)
                case Restored(tier, _, step):
                    self.auto_interval.tuner.on_restore(tier)
                    if step is not None:
                        self._resumed_at(step)
                case RolledBack(to_step, skipped, c, from_step):
                    lost = self.meter.rewind(to_step)
                    self.snap.steps_lost_to_rollbacks += lost
                    self.snap.batches_skipped += skipped
                    self.record_fault(c, now, "rollback", lost_steps=lost, step=from_step)
                case Replayed(msg):
                    on_replay(self, msg, now)  # the verdict's journal line, fault and action
                case SlowComm(finding):
                    self.on_comm_slowdown(finding, now)
                case Done(msg):
                    assert self.watch is not None
                    self.watch.done, self.watch.done_t = msg, now
                    self.snap.eval_loss = msg.get("eval_loss")
                    self.snap.step = int(msg.get("step", self.snap.step))

    def _on_step_timed(self, f: StepTimed, now: float) -> None:
        """Rank 0's step in the goodput ledger; the attempt's first step ends the restart time."""
        if f.first:
            began = self.recovery_started_t if self.recovery_started_t is not None else self.meter.t0
            self.meter.lost.restart += max(0.0, now - began - f.seconds)
            self.recovery_started_t = None
        self.meter.on_step(f.step, f.seconds, f.skipped, f.ckpt_wait_s, f.replay_s)
        self.meter.lost.checkpoint += float(f.mem_block_s or 0.0)  # the memory tier's tensor copy
        self.meter.settle(now)  # at step ends only: a step in progress is not yet anyone's
        if not f.skipped:
            self.auto_interval.tuner.on_step(f.seconds, f.mem_block_s)

    # ---- the run ---------------------------------------------------------------------------------
    def run(self) -> int:
        """Run to COMPLETED (exit 0) or FAILED (exit 1)."""
        cfg = self.cfg
        self.snap.started_t = self.meter.t0
        self.journal.append("run_start", name=cfg.name, total_steps=cfg.train.steps,
                            world_size=cfg.cluster.world_size, backend=cfg.cluster.backend)
        try:
            outcome = self.attempts()
        except Abort as exc:
            return self.finish_failed(str(exc))
        except KeyboardInterrupt:
            self.launcher.stop()
            return self.finish_failed("interrupted by the user (Ctrl-C); `orchestrator resume` continues")
        return self.finish_completed() if outcome.kind == "completed" else self.finish_failed(outcome.reason)

    def attempts(self) -> Outcome:
        """Launch, watch, stop, back off, relaunch, as the phase says, until an attempt completes or the
        run must end; the outcome of the last attempt."""
        failures, outcome = 0, Outcome("relaunch")
        while True:
            phase = self.phase.phase
            if phase in (Phase.STARTING, Phase.RELAUNCHING):
                self.run_attempt()
                self.phase.go(Phase.WATCHING)
            elif phase is Phase.WATCHING:
                outcome = self.watch_attempt()  # every way out of it moves to STOPPING
            elif phase is Phase.STOPPING and outcome.kind == "relaunch":
                failures += 1
                self.phase.go(Phase.BACKOFF)
            elif phase is Phase.STOPPING:
                return outcome
            elif phase is Phase.BACKOFF:
                wait = backoff_s(failures, self.cfg.policy.backoff_initial_s, self.cfg.policy.backoff_max_s)
                self.journal.append("backoff", seconds=round(wait, 3), attempt=self.attempt + 1)
                self.sleep(wait)
                self.phase.go(Phase.RELAUNCHING)
            else:
                raise AssertionError(f"the loop has nothing to do in phase {phase.value}")

    def choose_nodes(self) -> list[str]:
        self._avoid_lemons()
        healthy = [n for n in self.launcher.pool() if n not in self.excluded]
        need = self.cfg.cluster.nodes
        if len(healthy) < need and self.cfg.policy.shrink_on_node_loss:
            fit = shrunk_node_count(self.cfg, len(healthy))
            if fit:
                self.journal.append("shrink", nodes=fit, was=need, world=fit * self.cfg.cluster.ranks_per_node)
                return healthy[:fit]
        if len(healthy) < need:
            raise Abort(f"only {len(healthy)} healthy nodes left ({', '.join(healthy) or 'none'}), "
                        f"{need} needed; excluded: {', '.join(self.excluded)}")
        return healthy[:need]

    def run_attempt(self) -> None:
        """Start the next attempt on healthy nodes (or take over the one a resume re-attached to)."""
        if self.attached is not None:  # resume found the previous attempt still running: watch it
            spec, self.attached = self.attached, None
            self.watch = AttemptWatch(spec, self.clock())
            self.transition(RunState.RUNNING, f"re-attached to attempt {spec.attempt}")
            return
        if self.watch is not None:
            self.events.drain(self.watch)
        self.attempt += 1
        self.fence(self.attempt, "attempt starts")
        nodes = self._preflight(self.choose_nodes())
        spec = LaunchSpec(self.attempt, nodes, self.cfg.cluster.ranks_per_node, self.run_dir,
                          self.telemetry.address, logs_dir(self.run_dir, self.attempt))
        info = self.launcher.launch(spec)
        self.snap.active_nodes = list(nodes)
        self.snap.jobs.append({"attempt": self.attempt, "nodes": nodes, **info})
        self.journal.append("launch", attempt=self.attempt, nodes=nodes, telemetry=spec.telemetry_addr,
                            rank_map={str(k): v for k, v in spec.rank_map().items()},
                            resume_step=self.resume_step() if self.attempt > 0 else self.snap.last_checkpoint_step,
                            **info)
        self.watch = AttemptWatch(spec, self.clock())
        self.straggler.reset()
        self.straggler.set_groups(replica_groups(self.cfg, spec.world))
        self.comm.reset()
        if self.say is not None:
            self.say(placement_text(self.cfg, spec))
        if self.sm.state is not RunState.RUNNING:
            self.transition(RunState.RUNNING, f"attempt {self.attempt} launched on {', '.join(nodes)}")

    def _avoid_lemons(self) -> None:
        """Keep nodes with repeated trouble (lemon-node history) out, unless they pass a burn-in
        probe when the run cannot do without them."""
        if self.lemons is None:
            return
        now = self.clock()
        for node in self.lemons.nodes_to_exclude(now):
            if node in self.excluded or node not in self.launcher.pool():
                continue
            spare = len([n for n in self.launcher.pool() if n not in self.excluded]) - self.cfg.cluster.nodes
            if spare > 0:
                self.exclude(node, "lemon node: repeated faults in the node history")
            elif self.preflight is not None and not self.preflight([node]) and self._compute_check(node):
                self.lemons.mark_burn_in_passed(node, now)
                self.journal.append("node_readmitted", node=node, reason="passed the burn-in probe")

    def _compute_check(self, node: str) -> bool:
        """The burn-in's known-answer compute check (health.probes.burn_in), on the node itself: where a
        local node runs, or through srun on a Slurm node."""
        r = backend_burn_in(self.cfg, self.run_dir, node)
        if r is None:  # the backend's nodes are this host
            from health.probes.burn_in import compute_check, default_device
            r = compute_check(node, default_device())
        self.journal.append("burn_in", node=node, ran_on=r.node, verdict=r.verdict, evidence=r.evidence)
        return r.verdict == "ok"

    def _preflight(self, nodes: list[str]) -> list[str]:
        if self.preflight is None:
            return nodes
        for bad in self.preflight(nodes):
            c = Candidate("probe_failed", self.clock(), None, bad, {"detail": "pre-flight probe failed"})
            self.record_fault(c, self.clock(), "exclude_node")
            self.exclude(bad, "pre-flight probe failed")
        return self.choose_nodes()

    def exclude(self, node: str, reason: str, evidence: dict[str, Any] | None = None) -> None:
        if node in self.excluded:
            return
        self.excluded.append(node)
        self.journal.append("node_excluded", node=node, reason=reason, evidence=evidence or {})
        self.launcher.drain(node, reason)

    def restore(self, records: list[dict[str, Any]]) -> None:
        """Resume: rebuild what the journal says, and stop whatever an earlier supervisor left running."""
        last_launch: dict[str, Any] | None = None
        for r in records:
            ev = r["event"]
            if ev == "launch":
                last_launch, self.attempt = r, int(r["attempt"])
            elif ev == "node_excluded" and r["node"] not in self.excluded:
                self.excluded.append(r["node"])
            elif ev == "checkpoint":
                self.snap.last_checkpoint_step = int(r["step"])
            elif ev == "fault" and isinstance(r.get("injected"), dict):
                self.ground_truth.claimed.add(int(r["injected"]["index"]))
            elif ev == "action":
                self.snap.faults.append(FaultRecord(r["kind"], r.get("step"), r.get("rank"), r.get("node"),
                                                    None, r["action"], int(r.get("lost_steps") or 0),
                                                    t=float(r["t"])))
                self.snap.actions[r["action"]] = self.snap.actions.get(r["action"], 0) + 1
        if last_launch is not None:
            self._reattach(last_launch)
        self._cancel_leftovers(records)
        self.snap.step = self.snap.last_checkpoint_step or 0  # where a resumed run stands, not step 0
        (self.run_dir / "CANCEL_REQUESTED").unlink(missing_ok=True)  # a resume overrides a cancel
        self.sm = StateMachine(RunState.RECOVERING)
        self.snap.state = RunState.RECOVERING.value
        self.recovery_started_t = self.clock()
        self.journal.append("resume", attempt=self.attempt + 1, excluded=self.excluded,
                            last_checkpoint_step=self.snap.last_checkpoint_step)

    def _cancel_leftovers(self, records: list[dict[str, Any]]) -> None:
        """Every job the journal names, except the one re-attached, must be gone before we go on."""
        keep = str(self.attached_job) if self.attached_job else None
        ids = [str(r["job_id"]) for r in records if r["event"] == "launch" and r.get("job_id")]
        for job_id in self.launcher.cancel_jobs([j for j in ids if j != keep]):
            self.journal.append("leftover_cancelled", job_id=job_id)

    def _reattach(self, launch: dict[str, Any]) -> None:
        """A job still running (Slurm) is watched again, never submitted twice: its ranks keep sending
        telemetry to the journaled address, so the new supervisor binds that same port."""
        addr = str(launch.get("telemetry") or "")
        spec = LaunchSpec(int(launch["attempt"]), list(launch["nodes"]), self.cfg.cluster.ranks_per_node,
                          self.run_dir, addr, logs_dir(self.run_dir, int(launch["attempt"])))
        if not self.launcher.attach(launch, spec):
            return
        try:
            host, _, port = addr.rpartition(":")
            server = self._open_telemetry(int(port), advertise=host)
        except (OSError, ValueError):
            self.launcher.stop()  # cannot hear the old ranks: stop them and relaunch cleanly
            return
        self.telemetry.close()
        self.telemetry = server
        self.attached = spec
        self.attached_job = launch.get("job_id")
        self.journal.append("reattached", attempt=spec.attempt, telemetry=addr)

    # ---- watching one attempt -------------------------------------------------------------------
    def watch_attempt(self) -> Outcome:
        """Until the attempt is over: its outcome, the phase moved to STOPPING."""
        while True:
            w = self.watch  # replaced when Slurm requeues the same attempt
            assert w is not None
            select.select([self.telemetry], [], [], 0.05)
            now = self.clock()
            for msg in self.telemetry.drain():
                self.apply(self.events.on_message(msg, now, w), now)
            for ev in self.launcher.poll():
                if (outcome := self.on_launcher_event(ev, now)) is not None:
                    return outcome
            for verdict in self.link_probe.verdicts():
                self.on_link_verdict(verdict, now)
            self.check_liveness(now)
            if w.candidates and now - (w.first_candidate_t or now) >= SETTLE_S:
                return self.recover(root_cause(w.candidates), now)
            if w.ended:
                if w.done is None and not w.candidates:
                    w.done = self._done_from_evidence()
                if w.done is not None and not w.candidates:
                    self.phase.go(Phase.STOPPING)
                    return Outcome("completed")
                if not w.candidates:
                    w.add_candidate(Candidate("rank_crash", now, None, None,
                                              {"detail": "ranks ended without completing"}), now)
            self.publish()

    def on_comm_slowdown(self, f: CommSlowdown, now: float) -> None:
        """Every rank slowed while compute did not: probe the links in the background to name the node."""
        nodes = list(self.watch.spec.nodes) if self.watch is not None else []
        # a third node tells which end of a slow link is at fault: add an idle spare when there is one
        nodes += [n for n in self.launcher.pool() if n not in nodes and n not in self.excluded][:1]
        started = self.link_probe.start(f, nodes)
        self.journal.append("comm_slowdown", since_step=f.since_step, step_ratio=round(f.step_ratio, 3),
                            compute_ratio=round(f.compute_ratio, 3),
                            probe="started" if started else
                            ("busy" if self.link_probe.available else "not available on this backend"))

    def on_link_verdict(self, v: LinkVerdict, now: float) -> None:
        """The probe named the slow link's node(s): a slow_link fault each (alert); none: a global stall."""
        self.journal.append("link_probe", since_step=v.finding.since_step, nodes=v.nodes, slow_nodes=v.slow_nodes,
                            error=v.error)
        began = self.events.step_t.get(v.finding.since_step, now)
        for node in v.slow_nodes:
            c = Candidate("slow_link", began, None, node,
                          {"detail": f"all ranks {v.finding.step_ratio:.2f}x slower, compute "
                                     f"{v.finding.compute_ratio:.2f}x; the pairwise probe names {node}",
                           "probe": v.evidence.get(node)})
            self.record_fault(c, now, "alert", step=v.finding.since_step)

    def on_launcher_event(self, ev: LauncherEvent, now: float) -> Outcome | None:
        """Scheduler news; an outcome when it ends the attempt (a requeue, a cancel from outside)."""
        w = self.watch
        assert w is not None
        if ev.kind == "node_lost":
            last = (w.node_last_seen.get(ev.node, w.started_t) if ev.node
                    else max(w.node_last_seen.values(), default=w.started_t))
            settled = SETTLE_S if ev.info.get("silence_limit_s") else 0.0  # silence watched for its limit
            w.add_candidate(Candidate("node_failure", last, None, ev.node,
                                      {"detail": ev.detail, "state": ev.state, **ev.info}), now - settled)
        elif ev.kind == "job_ended":
            w.ended = True
            if ev.state == "CANCELLED" and w.done is None:
                self.phase.go(Phase.STOPPING)
                return self._cancelled_outside(ev.detail)
        elif ev.kind == "requeued" and ev.info.get("same_job"):
            self.on_slurm_requeue(ev, now)  # the same attempt goes on: keep watching
        elif ev.kind == "requeued":
            return self.on_requeue(ev, now)
        elif ev.kind == "job_started" and self.sm.state is RunState.RECOVERING:
            self.transition(RunState.RUNNING, f"job {ev.info.get('job_id')} running again")
        elif ev.kind == "spare_lost":  # an idle spare: nothing to recover, one spare fewer to offer
            self.journal.append("spare_lost", node=ev.node, detail=ev.detail)
        elif ev.kind == "node_verdict":  # recorded when it comes; the run moved on without it
            self.journal.append("node_verdict", node=ev.node, state=ev.state, evidence=ev.info)
        elif ev.kind == "rank_exit" and ev.rank is not None:
            w.on_rank_exit({"rank": ev.rank, "code": ev.code, "signal": ev.signal, "stderr_tail": ev.stderr_tail,
                            "t": ev.t or now}, self.classify, now)

    def check_liveness(self, now: float) -> None:
        w = self.watch
        assert w is not None
        h = self.cfg.health
        if w.done is not None:
            if not w.ended and now - (w.done_t or now) > h.hang_timeout_s:
                # training is complete; a rank stuck in teardown must not hold the run open
                self.journal.append("stragglers_stopped", detail="ranks still alive after done")
                self.launcher.stop()
                w.ended = True
            return
        if w.candidates:
            return
        limits = LivenessLimits(h.hang_timeout_s, h.startup_timeout_s, h.heartbeat_interval_s, h.hang_step_multiple)
        for f in assess_stall(now, w.last_progress_max or w.started_t, w.last_hb, w.rank_node, w.exited_ok, limits,
                              started=w.first_step_t is not None, busy=bool(w.busy),
                              slowest_step_s=w.slowest_step_s):
            # a stall was watched for its whole limit, which was its settle window: recover at once
            w.add_candidate(Candidate(f.kind, f.since_t, None, f.node, {"detail": f.detail}), now - SETTLE_S)

    def classify(self, code: int | None, sig: int | None, tail: str) -> Any:
        return classify_exit(code, sig, tail)

    # ---- recovery ---------------------------------------------------------------------------------
    def recover(self, c: Candidate, now: float) -> Outcome:
        """Stop the attempt, record the fault and the decision: relaunch or abort."""
        self.phase.go(Phase.STOPPING)
        if c.kind == "hang" and self.watch is not None:
            c = attribute_hang(c, self.watch, self.launcher)
        if c.kind in ("peer_lost", "rank_crash", "silent"):  # killed by an admin's scancel?
            cancelled = self.launcher.cancelled_outside()
            if cancelled:
                return self._cancelled_outside(cancelled)
        c = self._confirm_lost_node(c)
        self.fence(self.attempt + 1, f"attempt {self.attempt} declared dead ({c.kind})")
        self.launcher.stop()
        if c.kind == "node_failure" and self.watch is not None:
            c.evidence.setdefault("silent_ranks_by_node", self._silent_by_node(now))
        if c.kind == "node_failure" and c.node is None:
            c = self._blame_by_probe(c)
        if c.node and c.kind == "rank_crash":  # a node whose ranks keep crashing is excluded (policy)
            self.crashes[str(c.node)] += 1
        healthy = [n for n in self.launcher.pool() if n not in self.excluded]
        if c.node and c.node not in healthy and c.node not in self.excluded:
            healthy.append(str(c.node))  # the scheduler already dropped it from the pool: count it once
        spares = len(healthy) - self.cfg.cluster.nodes
        d = decide(c.kind, c.node, self.cfg.policy, Situation(
            restarts_used=self.attempt - self.requeues, spares_left=max(0, spares), nodes_needed=self.cfg.cluster.nodes,
            nodes_healthy=min(len(healthy), self.cfg.cluster.nodes), crashes_on_node=self.crashes[str(c.node)] - 1))
        resume = self.resume_step()
        lost = self.meter.rewind(resume)
        f = self.record_fault(c, now, d.action, lost_steps=lost)
        self.relaunched_for = f  # its lost_steps shrink if the ranks restore newer than assumed
        self.meter.lost.detection += f.detected_after_s or 0.0
        self.snap.steps_lost_to_rollbacks += lost
        self.snap.step = resume
        return self._apply(d, c, now)

    def _resumed_at(self, step: int) -> None:
        """The ranks say where they resumed; the last relaunch's charge follows: a memory copy newer than
        the supervisor had heard of when it decided means fewer steps redone, an older restore (a copy
        refused, storage) more."""
        back = self.meter.resumed_at(step)
        more = self.meter.rewind(step)
        self.snap.steps_lost_to_rollbacks = max(0, self.snap.steps_lost_to_rollbacks + more - back)
        if self.relaunched_for is not None:
            self.relaunched_for.lost_steps = max(0, self.relaunched_for.lost_steps + more - back)
            self.relaunched_for = None  # corrected once, by the restore of its own relaunch
        self.snap.step = min(self.snap.step, step)

    def resume_step(self) -> int:
        """Where the next attempt should resume: the newer of the last storage checkpoint and the
        memory tier's last copy (corrected when the ranks report what they actually loaded)."""
        return max(self.snap.last_checkpoint_step or 0, self.snap.last_memory_step or 0)

    def _confirm_lost_node(self, c: Candidate) -> Candidate:
        """Telemetry notices a dead node (ranks go silent, or are killed and their peers lose them)
        before the scheduler says so; ask the scheduler which node it was, so the right node is
        excluded. A peer_lost's node is only where the surviving rank ran: not evidence."""
        if c.kind not in ("hang", "silent", "peer_lost") or (c.node is not None and c.kind != "peer_lost"):
            return c
        lost = self.launcher.lost_nodes(wait_s=3 * self.cfg.health.hang_timeout_s)
        if not lost:
            return c
        first, *others = lost
        for node in others:
            self.exclude(node, "failed in the scheduler during the same attempt", lost[node])
        return Candidate("node_failure", c.t_fault, None, first,
                         {**c.evidence, **lost[first], "detail": f"{first} {lost[first].get('state')} per "
                          f"{lost[first].get('evidence_source')}; " + str(c.evidence.get("detail", ""))})

    def on_requeue(self, ev: LauncherEvent, now: float) -> Outcome:
        """Time limit or preemption after a checkpoint: resubmit without spending restart budget."""
        self.phase.go(Phase.STOPPING)
        self.fence(self.attempt + 1, f"attempt {self.attempt} requeued")
        self.launcher.stop()
        resume = self.snap.last_checkpoint_step or 0
        c = Candidate("preempted", ev.t or now, None, None, {"detail": ev.detail, "state": ev.state})
        self.record_fault(c, now, "requeue", lost_steps=self.meter.rewind(resume))
        self.snap.step = resume
        self.requeues += 1
        self.recovery_started_t = now
        if self.sm.state is not RunState.RECOVERING:
            self.transition(RunState.RECOVERING, "requeued after a checkpoint")
        return Outcome("relaunch", "requeued after a checkpoint")

    def on_slurm_requeue(self, ev: LauncherEvent, now: float) -> None:
        """Slurm requeued the preempted job itself (cluster.slurm.requeue_on_preemption): the same
        attempt, epoch and job id; its ranks start again from the checkpoint they wrote on SIGTERM. No
        restart budget is spent and nothing is fenced: Slurm ended every task before requeueing."""
        assert self.watch is not None
        resume = self.snap.last_checkpoint_step or 0
        c = Candidate("preempted", ev.t or now, None, None, {"detail": ev.detail, "state": ev.state, **ev.info})
        self.record_fault(c, now, "requeue", lost_steps=self.meter.rewind(resume))  # same_job in evidence
        self.snap.step = resume
        self.journal.append("requeued_same_job", attempt=self.attempt, job_id=ev.info.get("job_id"),
                            resume_step=resume, restarts=ev.info.get("restarts"))
        self.events.drain(self.watch)
        self.watch = AttemptWatch(self.watch.spec, now)  # the same ranks again, from the start
        self.recovery_started_t = now
        if self.sm.state is not RunState.RECOVERING:
            self.transition(RunState.RECOVERING, f"job {ev.info.get('job_id')} preempted and requeued by Slurm")

    def _apply(self, d: Decision, c: Candidate, now: float) -> Outcome:
        if d.exclude_node and c.node:
            self.exclude(str(c.node), d.reason, c.evidence)
        if not d.relaunch:
            return Outcome("abort", d.reason if d.action == "abort" else f"{c.kind}: {d.reason}")
        self.recovery_started_t = now
        if self.sm.state is not RunState.RECOVERING:
            self.transition(RunState.RECOVERING, d.reason)
        return Outcome("relaunch", d.reason)

    # ---- fencing and evidence -----------------------------------------------------------------------
    def fence(self, epoch: int, why: str) -> None:
        """Make ``epoch`` the run's current one (RUN_DIR/EPOCH) before anything of it runs: ranks of
        older attempts stop before committing, and what they commit later is never loaded."""
        prev = read_state(self.run_dir)
        if prev is not None and prev.epoch >= epoch:
            return
        state = advance_epoch(self.run_dir, epoch, checkpoint_root(self.run_dir, self.cfg.checkpoint.dir),
                              self.clock())
        rec = state.fences[-1] if state.fences and state.fences[-1].epoch == epoch else None
        self.journal.append("fence", epoch=epoch, reason=why, accepted=list(rec.accepted) if rec else [])

    def _cancelled_outside(self, detail: str) -> Outcome:
        """Someone cancelled our job (an admin, scancel, or `orchestrator cancel`, which leaves
        CANCEL_REQUESTED in the run directory first): respect it, end FAILED, relaunch nothing."""
        who = ("by `orchestrator cancel`" if (self.run_dir / "CANCEL_REQUESTED").exists()
               else "outside the orchestrator")
        return Outcome("abort", f"the job was cancelled {who} ({detail}); nothing was relaunched; "
                                "`orchestrator resume` continues from the last checkpoint")

    def _done_from_evidence(self) -> dict[str, Any] | None:
        """The ranks' ``done`` can be lost (sent while no supervisor listened, e.g. before a resumed
        supervisor bound the port): every rank exited 0 and the final checkpoint is committed is the
        same fact, read from the run directory."""
        w = self.watch
        assert w is not None
        codes = self.launcher.exit_codes()
        if len(codes) < w.spec.world or any(code != 0 for code in codes.values()):
            return None
        root = checkpoint_root(self.run_dir, self.cfg.checkpoint.dir)
        total = self.cfg.train.steps
        if not (root / f"step_{total:08d}" / "COMMITTED").exists():
            return None
        self.journal.append("done_from_evidence", attempt=w.spec.attempt, ranks=len(codes), step=total)
        self.snap.step = total
        return {"step": total, "eval_loss": self.snap.eval_loss, "evidence": "exit codes + checkpoint"}

    def _silent_by_node(self, now: float) -> dict[str, list[int]]:
        """The rank map's cross-check of a blamed node: which ranks went quiet, by node."""
        w = self.watch
        assert w is not None
        out: dict[str, list[int]] = {}
        # 3 intervals: a node's relay reports each rank's last-heard time once an interval, so a live rank
        # can read up to two intervals old just before its node's next aggregate
        for r in w.silent_ranks(now, 3 * self.cfg.health.heartbeat_interval_s):
            out.setdefault(w.rank_node.get(r, "?"), []).append(r)
        return {n: sorted(rs) for n, rs in sorted(out.items())}

    def _blame_by_probe(self, c: Candidate) -> Candidate:
        """The controller named no node: say so, probe every node of the allocation, exclude what fails."""
        w = self.watch
        nodes = list(w.spec.nodes) if w is not None else []
        self.journal.append("blame", node="unknown", nodes=nodes, evidence=c.evidence)
        if self.preflight is None or not nodes:
            return c
        failed = self.preflight(nodes)
        self.journal.append("blame_probe", nodes=nodes, failed=failed)
        for node in failed[1:]:
            self.exclude(node, "failed the probe after an unattributed node failure",
                         {**c.evidence, "probe": "failed"})
        if failed:
            c.node = failed[0]
            c.evidence = {**c.evidence, "probe": "failed", "detail": f"{failed[0]} failed the probe; "
                          + str(c.evidence.get("detail", ""))}
        return c

    # ---- endings ----------------------------------------------------------------------------------
    def finish_completed(self) -> int:
        self.phase.go(Phase.DONE)
        self.launcher.stop()  # the job has ended: confirm squeue and sacct agree before saying COMPLETED
        if self.watch is not None:
            self.events.drain(self.watch)
        self.publish(force=True)
        done = self.watch.done if self.watch else None
        self.journal.append("complete", step=self.snap.step, eval_loss=self.snap.eval_loss,
                            goodput=self.snap.goodput, wall_s=round(self.snap.wall_s, 3),
                            final_eval_loss=(done or {}).get("eval_loss"))
        self.transition(RunState.COMPLETED, "all steps applied")
        self.close()
        return 0

    def finish_failed(self, reason: str) -> int:
        self.phase.go(Phase.DONE)
        self.fence(self.attempt + 1, "run failed")
        self.launcher.stop()
        self.journal.append("failed", reason=reason)
        self.transition(RunState.FAILED, reason)
        self.close()
        return 1

    def close(self) -> None:
        self.telemetry.close()
        self.launcher.close()
