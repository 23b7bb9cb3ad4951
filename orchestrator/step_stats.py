"""Per-step aggregation of rank telemetry: one row per step, summaries instead of per-rank series.

Rows are emitted once every rank of the attempt reported the step (or the step fell two behind), so a
metrics line and the straggler detector see a whole step at a time, whatever the number of ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median
from typing import Any

import numpy as np


@dataclass
class StepRow:
    step: int
    attempt: int
    lead: dict[str, Any]  # rank 0's message: loss, grad_norm, lr, ...
    compute: dict[int, float] = field(default_factory=dict)  # rank → local compute seconds

    def node_times(self, rank_node: dict[int, str], index: NodeIndex | None = None) -> dict[str, float]:
        """The slowest rank's compute seconds per node; with ``index`` (the same map as arrays) in one
        numpy pass, which at 16k ranks is ~10x cheaper than this loop."""
        if index is not None and self.compute:
            return index.max_per_node(self.compute)
        out: dict[str, float] = {}
        for r, s in self.compute.items():
            n = rank_node.get(r, "?")
            out[n] = max(out.get(n, 0.0), s)
        return out

    def summary(self) -> tuple[float | None, float | None, int | None]:
        """(median, max, slowest rank) of compute time."""
        if not self.compute:
            return None, None, None
        slow = max(self.compute, key=lambda r: self.compute[r])
        return median(self.compute.values()), self.compute[slow], slow


class NodeIndex:
    """rank → node as arrays, built once per attempt, for per-node maxima over a whole step row."""

    def __init__(self, rank_node: dict[int, str]) -> None:
        self.names = sorted(set(rank_node.values()))
        pos = {n: i for i, n in enumerate(self.names)}
        self.of_rank = np.full(max(rank_node, default=-1) + 1, -1, dtype=np.int64)
        for r, n in rank_node.items():
            if r >= 0:
                self.of_rank[r] = pos[n]

    def max_per_node(self, compute: dict[int, float]) -> dict[str, float]:
        ranks = np.fromiter(compute.keys(), dtype=np.int64, count=len(compute))
        secs = np.fromiter(compute.values(), dtype=float, count=len(compute))
        node = np.full(len(ranks), -1, dtype=np.int64)
        known = (ranks >= 0) & (ranks < len(self.of_rank))
        node[known] = self.of_rank[ranks[known]]
        out = np.full(len(self.names) + 1, -np.inf)  # the last slot: ranks of no known node ("?")
        np.maximum.at(out, node, secs)  # -1 is the last slot
        names = self.names + ["?"]
        return {names[i]: float(out[i]) for i in np.flatnonzero(out > -np.inf).tolist()}


class StepAggregator:
    def __init__(self, world: int, attempt: int) -> None:
        self.world, self.attempt = world, attempt
        self.pending: dict[int, StepRow] = {}

    def add(self, msg: dict[str, Any]) -> list[StepRow]:
        """Feed one ``step`` message; returns rows that are now complete, oldest first."""
        t = msg.get("compute_time", msg.get("step_time"))
        return self.add_time(int(msg["rank"]), int(msg["step"]), t if isinstance(t, int | float) else None,
                             msg if msg["rank"] == 0 else None)

    def add_time(self, rank: int, step: int, secs: float | None, lead: dict[str, Any] | None = None) -> list[StepRow]:
        """One rank's compute time for ``step`` (rank 0's whole message as ``lead``): as :meth:`add`."""
        return self.add_times(step, {rank: secs}, lead)

    def add_times(self, step: int, times: dict[int, float | None], lead: dict[str, Any] | None = None) -> list[StepRow]:
        """Several ranks' compute times for ``step`` at once (a node's rows): as that many :meth:`add`."""
        row = self.pending.get(step)
        if row is None:
            row = self.pending[step] = StepRow(step, self.attempt, {})
        row.compute.update({r: float(t) for r, t in times.items() if t is not None})
        if lead is not None:
            row.lead = lead
        done = [s for s, r in self.pending.items()
                if r.lead and (len(r.compute) >= self.world or s < step - 1)]
        return [self.pending.pop(s) for s in sorted(done)] if done else []

    def drain(self) -> list[StepRow]:
        """Rows rank 0 reported whose other ranks never will (the attempt ended: a node died with its
        rows still in its agent's relay buffer). The step was applied, so its metrics line is owed."""
        rows = [self.pending[s] for s in sorted(self.pending) if self.pending[s].lead]
        self.pending.clear()
        return rows
