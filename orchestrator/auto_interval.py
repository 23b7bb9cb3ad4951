"""The supervisor's side of ``checkpoint.every_steps: auto``: feed the tuner, re-tune, journal, publish.

Measurements come from the ranks' telemetry (step time, the memory copy's blocking time, each storage
save's blocking time, which tier each restore came from); failures and exposure from this run; history
from the lemon-node store. Every change of interval is journaled (``interval``) with all its inputs and
written to ``RUN_DIR/INTERVALS`` for rank 0 to pick up; ``status`` shows predicted next to measured goodput.
"""

from __future__ import annotations

from typing import Any

from orchestrator.interval import IntervalTuner, write_intervals

RETUNE_EVERY_S = 5.0
HISTORY_WINDOW_S = 30 * 86_400.0
RELAUNCH_ACTIONS = ("relaunch", "exclude_node", "requeue")


class AutoInterval:
    def __init__(self, sup: Any) -> None:
        ck = sup.cfg.checkpoint
        self.sup = sup
        self.tuner = IntervalTuner(sup.cfg.cluster.world_size, sup.cfg.train.steps, ck.memory.enabled,
                                   ck.memory.every_steps == "auto", ck.every_steps == "auto",
                                   ck.memory.every_steps if isinstance(ck.memory.every_steps, int) else 1,
                                   ck.every_steps if isinstance(ck.every_steps, int) else 10)
        self._next_t = 0.0
        self._history: tuple[int, float] | None = None

    def history(self) -> tuple[int, float]:
        """Faults the lemon-node store recorded on this pool's nodes before this run, and the span they
        cover (assumed busy: an upper bound on exposure, so a lower bound on the rate)."""
        if self._history is not None:
            return self._history
        sup, t0 = self.sup, self.sup.meter.t0
        faults, first = 0, t0
        if sup.lemons is not None:
            for node in sup.launcher.pool():
                ev = [e for e in sup.lemons.history(node)
                      if e.category == "fault" and t0 - HISTORY_WINDOW_S <= e.t < t0]
                faults += len(ev)
                first = min([first] + [e.t for e in ev])
        self._history = (faults, t0 - first if faults else 0.0)
        return self._history

    def restart_s(self) -> float:
        lost = self.sup.meter.lost
        return (lost.restart + lost.detection) / max(1, self.sup.snap.restarts + 1)

    def tick(self, now: float) -> None:
        """Re-tune at most every few seconds; journal and publish a change."""
        if not self.tuner.active or now < self._next_t:
            return
        self._next_t = now + RETUNE_EVERY_S
        failures = sum(1 for f in self.sup.snap.faults if f.action in RELAUNCH_ACTIONS)
        decision = self.tuner.retune(failures, now - self.sup.meter.t0, self.history(), self.restart_s())
        if self.tuner.last is not None:
            self.sup.snap.predicted_goodput = self.tuner.last["predicted_goodput"]
            self.sup.snap.intervals = {k: self.tuner.last[k] for k in ("memory_every_steps", "storage_every_steps")}
        if decision is not None:
            write_intervals(self.sup.run_dir, decision["memory_every_steps"], decision["storage_every_steps"])
            self.sup.journal.append("interval", **decision)
