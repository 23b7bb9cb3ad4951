"""Goodput (ETTR): productive training time over wall time, and where the rest went.

Productive time is the duration of every optimizer step that the final model keeps. A step redone after
a rollback or relaunch moves its first duration to ``recomputation``; a skipped step's time is lost too.
"""

from __future__ import annotations

from orchestrator.snapshot import LostTime


class GoodputMeter:
    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.kept: dict[int, float] = {}
        self.lost = LostTime()

    def on_step(self, step: int, seconds: float, skipped: bool) -> None:
        if skipped:
            self.lost.recomputation += seconds
            return
        if step in self.kept:  # redone without a rollback we saw: count the earlier one as lost
            self.lost.recomputation += self.kept[step]
        self.kept[step] = seconds

    def rewind(self, resume_step: int) -> int:
        """Steps from ``resume_step`` on will be redone; returns how many were lost."""
        gone = [s for s in self.kept if s >= resume_step]
        for s in gone:
            self.lost.recomputation += self.kept.pop(s)
        return len(gone)

    @property
    def productive(self) -> float:
        return sum(self.kept.values())

    def goodput(self, now: float) -> float:
        wall = max(now - self.t0, 1e-9)
        return min(1.0, self.productive / wall)
