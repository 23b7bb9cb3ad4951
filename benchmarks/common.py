"""Helpers shared by the benchmark scripts: machine description, tables, and the goodput arithmetic.

Every benchmark prints a plain-text table and can append a JSON record; BENCHMARKS.md quotes both. The
goodput of a run is computed here, from per-step rows, so the orchestrator's run (rows from its
``metrics.jsonl``) and a torchrun baseline (rows from a UDP collector) are scored by the same code.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def machine() -> dict[str, Any]:
    """nproc, CPU model, memory and versions: the context every number in BENCHMARKS.md needs."""
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        kb = next(int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines()
                  if l.startswith("MemTotal"))
        mem_gib = round(kb / 2**20, 1)
    except (OSError, StopIteration):
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem_gib": mem_gib, "python": platform.python_version(),
            "load1": round(os.getloadavg()[0], 2)}


def fmt(v: Any) -> str:
    """Numbers short enough to read in a terminal table."""
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"
    return "-" if v is None else str(v)


def table(rows: Sequence[dict[str, Any]], cols: Sequence[str] | None = None) -> str:
    """A Markdown table (pastes straight into BENCHMARKS.md)."""
    if not rows:
        return "(no rows)"
    cols = list(cols or rows[0].keys())
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def save_json(path: str | None, name: str, payload: dict[str, Any]) -> None:
    """Append one result record (with the machine) to PATH as a JSON line, if a path was given."""
    if not path:
        return
    with open(path, "a") as f:
        f.write(json.dumps({"bench": name, "machine": machine(), **payload}, default=str) + "\n")


def median(xs: Iterable[float]) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


@dataclass
class StepLedger:
    """Goodput bookkeeping from step rows in arrival order (the same rule as orchestrator.goodput).

    A step's time counts as productive only for its last applied execution; an earlier execution of
    the same step (redone after a relaunch or rollback) and every skipped step are recomputation.
    """

    kept: dict[int, float] = field(default_factory=dict)
    recomputed_s: float = 0.0
    recomputed_steps: int = 0
    skipped_steps: int = 0

    def add(self, step: int, seconds: float, skipped: bool) -> None:
        if skipped:
            self.recomputed_s += seconds
            self.skipped_steps += 1
            return
        if step in self.kept:
            self.recomputed_s += self.kept[step]
            self.recomputed_steps += 1
        self.kept[step] = seconds

    @property
    def productive_s(self) -> float:
        return sum(self.kept.values())

    def goodput(self, wall_s: float) -> float:
        return self.productive_s / wall_s if wall_s > 0 else float("nan")


def ledger_from_rows(rows: Iterable[dict[str, Any]]) -> StepLedger:
    """Rows carry ``step``, ``step_time`` and ``skipped`` (metrics.jsonl lines or rank-0 step datagrams)."""
    led = StepLedger()
    for r in rows:
        led.add(int(r["step"]), float(r.get("step_time") or 0.0), bool(r.get("skipped")))
    return led
