"""Read a run directory (docs/RUNDIR.md) into plain data the plots, trace and comparison share.

metrics.jsonl may hold several lines for one step: a rollback recomputes steps and a relaunch starts a
new attempt. The contract is "latest attempt wins", and within an attempt the later line wins (the
recomputation after a rollback), so :func:`load_metrics` keeps, per step, the last line of the highest
attempt. Torn or garbled lines (a crash mid-write) are skipped like the journal's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.journal import read_journal
from orchestrator.snapshot import read_status

METRICS_FILE = "metrics.jsonl"


@dataclass
class RunData:
    """Everything the report needs: per-step metrics (sorted, deduplicated), journal events, status."""

    run_dir: Path
    name: str
    metrics: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, Any] | None = None

    def of(self, *kinds: str) -> list[dict[str, Any]]:
        """Journal events whose ``event`` is one of ``kinds``, in journal order."""
        return [e for e in self.events if e.get("event") in kinds]

    @property
    def start_t(self) -> float | None:
        starts = self.of("run_start")
        if starts:
            return float(starts[0]["t"])
        ts = [float(e["t"]) for e in self.events if "t" in e] + [float(m["t"]) for m in self.metrics
                                                                 if "t" in m]
        return min(ts) if ts else None

    def eval_points(self) -> list[tuple[int, float]]:
        """(step, eval_loss) from ``eval`` events, the last one per step; the final ``complete`` too."""
        points: dict[int, float] = {}
        for e in self.of("eval", "complete"):
            if e.get("step") is not None and isinstance(e.get("eval_loss"), int | float):
                points[int(e["step"])] = float(e["eval_loss"])
        return sorted(points.items())


def load_metrics(path: Path) -> list[dict[str, Any]]:
    """Per-step metric lines, latest attempt (then latest line) winning, sorted by step."""
    best: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return []
    with path.open("rb") as f:
        for raw in f:
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
                continue
            old = best.get(rec["step"])
            if old is None or int(rec.get("attempt", 0)) >= int(old.get("attempt", 0)):
                best[rec["step"]] = rec
    return [best[s] for s in sorted(best)]


def load_run(run_dir: str | Path) -> RunData:
    """Load ``run_dir``; raises FileNotFoundError when it holds neither a journal nor metrics."""
    run_dir = Path(run_dir)
    metrics = load_metrics(run_dir / METRICS_FILE)
    events = list(read_journal(run_dir))
    if not metrics and not events:
        raise FileNotFoundError(f"{run_dir} has no journal.jsonl or metrics.jsonl: is it a run "
                                "directory (runs/<name>/)?")
    status = read_status(run_dir)
    name = _run_name(run_dir, events, status)
    return RunData(run_dir=run_dir, name=name, metrics=metrics, events=events, status=status)


def _run_name(run_dir: Path, events: list[dict[str, Any]], status: dict[str, Any] | None) -> str:
    for e in events:
        if e.get("event") == "run_start" and e.get("name"):
            return str(e["name"])
    if status and status.get("name"):
        return str(status["name"])
    return run_dir.name
