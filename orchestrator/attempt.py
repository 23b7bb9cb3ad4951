"""What the supervisor knows about the attempt that is running now: liveness, progress, candidates.

Kept apart from the supervisor loop so that the rules for "is this rank alive, progressing, done?" read
as one small unit. Times are the supervisor's receive times (one clock), never the ranks' clocks.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from orchestrator.launcher.base import LaunchSpec
from orchestrator.step_stats import StepAggregator
from orchestrator.telemetry_columns import Entries
from orchestrator.triage import Candidate, is_peer_failure

PREEMPTED_EXIT = 75  # trainer.rank_main.PREEMPTED_EXIT (no torch here): checkpointed on a signal


@dataclass
class AttemptWatch:
    spec: LaunchSpec
    started_t: float
    agg: StepAggregator = field(init=False)
    rank_node: dict[int, str] = field(init=False)
    last_hb: dict[int, float] = field(default_factory=dict)
    last_progress: dict[int, float] = field(default_factory=dict)
    pids: dict[int, int] = field(default_factory=dict)
    exited_ok: set[int] = field(default_factory=set)
    done: dict[str, Any] | None = None
    ended: bool = False
    candidates: list[Candidate] = field(default_factory=list)
    first_candidate_t: float | None = None
    first_step_t: float | None = None
    node_last_seen: dict[str, float] = field(default_factory=dict)
    skip_votes: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    last_progress_max: float | None = None  # running max of last_progress: O(1) per tick
    busy: dict[int, str] = field(default_factory=dict)  # rank → phase other than "step" (checkpoint...)
    done_t: float | None = None
    recent_step_s: deque[float] = field(default_factory=lambda: deque(maxlen=20))  # rank 0's, first excluded
    first_step_s: float = 0.0

    def __post_init__(self) -> None:
        self.agg = StepAggregator(self.spec.world, self.spec.attempt)
        self.rank_node = self.spec.rank_map()

    def note_step_time(self, secs: float, first: bool) -> None:
        if first:
            self.first_step_s = secs
        else:
            self.recent_step_s.append(secs)

    @property
    def slowest_step_s(self) -> float:
        """The pace the hang limit stretches to: the slowest of the last 20 steps; the attempt's first
        step (its first-call costs make it slow) only until a second one comes."""
        return max(self.recent_step_s, default=self.first_step_s)

    def seen(self, msg: dict[str, Any], now: float) -> None:
        rank = int(msg["rank"])
        if rank >= 0:
            self.last_hb[rank] = now
            node = self.rank_node.get(rank)
            if node:
                self.node_last_seen[node] = now
        if msg["type"] == "hb":
            self._heartbeat(rank, msg.get("pid"), msg.get("phase"), now)

    def _heartbeat(self, rank: int, pid: Any, phase: Any, t: float) -> None:
        if isinstance(pid, int):
            self.pids[rank] = pid
        if isinstance(phase, str) and phase not in ("step", "start"):
            self.busy[rank] = phase[:32]
        elif self.busy.pop(rank, None) is not None:
            # a finished save/eval/restore is progress: the stall clock must not include its
            # duration, or a long checkpoint reads as a hang the moment it ends
            self.last_progress[rank] = t
            self.last_progress_max = max(self.last_progress_max or t, t)

    def seen_aggregate(self, entries: Entries, phases: list[Any] | None, now: float) -> None:
        """A node agent's report, as columns (rank, seconds since the agent last heard it, step, pid) and
        their phases (None: all "step"). The last-heard time is ``now - age``, so a rank that stopped behind
        a live agent ages as if it had reported directly, and the hang timeout finds it the same way. (A
        step row received since may have been newer by under one interval: the rank reads that much older,
        never younger.)"""
        if not len(entries):
            return
        ranks = entries.rank  # in bulk: 16k ranks twice a second
        stamps = dict(zip(ranks, [now - a for a in entries.age]))
        self.last_hb.update(stamps)
        self.pids.update(zip(ranks, entries.pid) if min(entries.pid) >= 0 else
                         ((r, p) for r, p in zip(ranks, entries.pid) if p >= 0))
        newest = now - min(entries.age)
        for node in {self.rank_node.get(r) for r in ranks}:
            if node and newest > self.node_last_seen.get(node, newest - 1):
                self.node_last_seen[node] = newest
        if phases is None:  # every rank in "step": only a rank that was busy changes state
            for r in [r for r in ranks if r in self.busy] if self.busy else ():
                self._heartbeat(r, None, "step", stamps[r])
            return
        for r, p in zip(ranks, phases):
            self._heartbeat(r, None, p, stamps[r])

    def progressed(self, rank: int, now: float) -> None:
        self.last_progress[rank] = now
        self.last_progress_max = now
        self.busy.pop(rank, None)

    def add_candidate(self, c: Candidate, now: float) -> None:
        self.candidates.append(c)
        if self.first_candidate_t is None:
            self.first_candidate_t = now

    def on_rank_exit(self, msg: dict[str, Any], classify: Any, now: float) -> None:
        rank, code = int(msg["rank"]), msg.get("code")
        if code == 0:
            self.exited_ok.add(rank)
            return
        if code == PREEMPTED_EXIT:  # checkpointed on a signal: the launcher says why (preemption, time limit)
            self.busy[rank] = "checkpointed, awaiting requeue"  # the start-up budget, not the hang timeout
            return
        if msg.get("stopping"):
            return
        tail = str(msg.get("stderr_tail", ""))
        sig = msg.get("signal") if isinstance(msg.get("signal"), int) else None
        node = self.rank_node.get(rank)
        evidence = {"code": code, "signal": sig, "stderr_tail": tail[-600:]}
        if is_peer_failure(tail, sig):
            self.add_candidate(Candidate("peer_lost", float(msg["t"]), rank, node, evidence), now)
            return
        fc = classify(code, sig, tail)
        evidence["classified"] = fc.evidence
        if fc.action == "abort":  # the run ends on this: its line is the fault's detail in status
            evidence["detail"] = fc.evidence
        self.add_candidate(Candidate(fc.kind, float(msg["t"]), rank, node, evidence), now)

    def silent_ranks(self, now: float, timeout: float) -> list[int]:
        return [r for r, t in self.last_hb.items() if now - t > timeout and r not in self.exited_ok]

    def heartbeat_age_max(self, now: float) -> float | None:
        ages = [now - t for r, t in self.last_hb.items() if r not in self.exited_ok]
        return max(ages) if ages else None
