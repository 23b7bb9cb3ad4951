"""Export a run's loss curve as a small, versioned JSON trace (see TRACE_FORMAT.md) and read it back.

Why a trace: ``compare`` needs a reference that outlives the run directory (a golden curve checked
into a repo, a run on another cluster); a trace is the few kilobytes of a run that a comparison needs.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from orchestrator.report.rundir import RunData, load_run

TRACE_FORMAT = "orchestrator-trace"
TRACE_VERSION = 1


def _num(v: Any) -> float | None:
    """JSON has no NaN/Inf: non-finite or missing values become null."""
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def trace_from_run(run: RunData) -> dict[str, Any]:
    status = run.status or {}
    total = status.get("total_steps") or next(
        (e.get("total_steps") for e in run.of("run_start")), None)
    steps = [{"step": int(m["step"]), "loss": _num(m.get("loss")), "grad_norm": _num(m.get("grad_norm")),
              "skipped": bool(m.get("skipped", False))} for m in run.metrics]
    evals = [{"step": s, "eval_loss": _num(v)} for s, v in run.eval_points()]
    return {"format": TRACE_FORMAT, "version": TRACE_VERSION, "run": run.name,
            "total_steps": total, "steps": steps, "eval": evals}


def export_trace(run_dir: str | Path, out: str | Path) -> Path:
    """Write the trace of ``run_dir`` to ``out`` atomically; returns ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = trace_from_run(load_run(run_dir))
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, allow_nan=False)
            f.write("\n")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def load_trace(path: str | Path) -> dict[str, Any]:
    """Read and check a trace; the error says what is wrong and which version we read."""
    try:
        doc = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path} is not an orchestrator trace or run directory (not JSON)") from None
    if not isinstance(doc, dict) or doc.get("format") != TRACE_FORMAT:
        raise ValueError(f"{path} is not an orchestrator trace (missing format: {TRACE_FORMAT!r})")
    if doc.get("version") != TRACE_VERSION:
        raise ValueError(f"{path} is trace version {doc.get('version')!r}; this orchestrator reads "
                         f"version {TRACE_VERSION}. Re-export it with `orchestrator export`.")
    if not isinstance(doc.get("steps"), list):
        raise ValueError(f"{path}: 'steps' must be a list of {{step, loss, grad_norm}} objects")
    return doc


def load_any(path: str | Path) -> dict[str, Any]:
    """A run directory or a trace file, as a trace document."""
    p = Path(path)
    if p.is_dir():
        return trace_from_run(load_run(p))
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such run directory or trace file")
    return load_trace(p)
