"""Compare a run's loss curve with a reference and say whether, where and by how much they diverge.

Why smoothed relative difference: step-to-step loss noise (data order, non-deterministic reductions)
is larger than a real regression early on; a trailing mean over ``window`` steps removes the noise but
still shows a divergence within ``window`` steps of where it starts. The difference is relative to
the reference so one tolerance works whatever the loss scale.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.report.trace import load_any

EPS = 1e-12


@dataclass
class CompareResult:
    """Outcome of :func:`compare`; divergences are relative (0.05 = 5%) and after smoothing."""

    run: str
    reference: str
    verdict: str  # "match" or "diverged"
    tolerance: float
    window: int
    common_steps: int
    first_step: int | None
    last_step: int | None
    first_divergent_step: int | None
    max_divergence: float
    max_divergence_step: int | None
    mean_divergence: float
    final_loss: float | None
    final_loss_reference: float | None
    eval_divergence: float | None
    eval_step: int | None

    @property
    def matched(self) -> bool:
        return self.verdict == "match"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """Human-readable verdict, one fact per line."""
        lines = [f"{self.run} vs {self.reference}: {self.verdict.upper()} "
                 f"(tolerance {self.tolerance:.1%}, smoothed over {self.window} steps)",
                 f"  compared {self.common_steps} steps ({self.first_step}..{self.last_step})",
                 f"  max divergence {self.max_divergence:.2%} at step {self.max_divergence_step}, "
                 f"mean {self.mean_divergence:.2%}"]
        if self.first_divergent_step is not None:
            lines.append(f"  first step past tolerance: {self.first_divergent_step}")
        if self.eval_divergence is not None:
            lines.append(f"  eval loss at step {self.eval_step} differs by {self.eval_divergence:.2%}")
        return "\n".join(lines)


def _curve(doc: dict[str, Any]) -> dict[int, float]:
    return {int(s["step"]): float(s["loss"]) for s in doc["steps"]
            if not s.get("skipped") and isinstance(s.get("loss"), int | float)
            and math.isfinite(s["loss"])}


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` points (shorter at the start)."""
    csum = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


def _eval_divergence(a: dict[str, Any], b: dict[str, Any]) -> tuple[float | None, int | None]:
    ea = {int(e["step"]): e["eval_loss"] for e in a.get("eval", []) if e.get("eval_loss") is not None}
    eb = {int(e["step"]): e["eval_loss"] for e in b.get("eval", []) if e.get("eval_loss") is not None}
    common = sorted(set(ea) & set(eb))
    if not common:
        return None, None
    step = common[-1]
    return abs(ea[step] - eb[step]) / max(abs(eb[step]), EPS), step


def compare(run_or_trace: str | Path, reference: str | Path, tolerance: float = 0.05,
            window: int = 10) -> CompareResult:
    """Align ``run_or_trace`` and ``reference`` (run dirs or traces) by step and compare losses.

    Raises ValueError when they share no step with a finite loss: there is nothing to compare.
    """
    if tolerance <= 0 or window < 1:
        raise ValueError(f"need tolerance > 0 and window >= 1, got {tolerance} and {window}")
    a, b = load_any(run_or_trace), load_any(reference)
    ca, cb = _curve(a), _curve(b)
    steps = sorted(set(ca) & set(cb))
    if not steps:
        raise ValueError(f"{run_or_trace} and {reference} have no step with a finite loss in common")
    la = _smooth(np.array([ca[s] for s in steps]), window)
    lb = _smooth(np.array([cb[s] for s in steps]), window)
    rel = np.abs(la - lb) / np.maximum(np.abs(lb), EPS)
    past = np.flatnonzero(rel > tolerance)
    ev, ev_step = _eval_divergence(a, b)
    diverged = past.size > 0 or (ev is not None and ev > tolerance)
    imax = int(np.argmax(rel))
    return CompareResult(
        run=str(a.get("run")), reference=str(b.get("run")),
        verdict="diverged" if diverged else "match", tolerance=tolerance, window=window,
        common_steps=len(steps), first_step=steps[0], last_step=steps[-1],
        first_divergent_step=steps[int(past[0])] if past.size else None,
        max_divergence=float(rel[imax]), max_divergence_step=steps[imax],
        mean_divergence=float(rel.mean()), final_loss=ca[steps[-1]],
        final_loss_reference=cb[steps[-1]], eval_divergence=ev, eval_step=ev_step)
