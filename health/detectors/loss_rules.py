"""NaN/Inf and loss-spike rules: one implementation shared by the trainer's in-step guard and the
supervisor's detectors, so both always agree on what a bad step is.

Spike rule: after ``warmup_steps`` good steps, a loss is a spike when it exceeds the median of the last
``window`` good losses by more than ``k`` robust standard deviations (1.4826 * MAD) *and* by at least
``min_rel_increase`` of the median (so a flat, noise-free loss curve does not flag tiny wiggles).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median

MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class SpikeParams:
    window: int = 20
    k: float = 6.0
    warmup_steps: int = 20
    min_rel_increase: float = 0.1


@dataclass(frozen=True)
class LossVerdict:
    bad: bool
    rule: str  # "ok" | "nonfinite_loss" | "nonfinite_grad" | "spike"
    detail: str = ""


def is_nonfinite(x: float | None) -> bool:
    return x is None or not math.isfinite(x)


def spike_threshold(history: Sequence[float], p: SpikeParams) -> float | None:
    """The loss above which the next step is a spike, or None while still warming up."""
    if len(history) < max(p.warmup_steps, 4):
        return None
    recent = list(history[-p.window:])
    med = median(recent)
    mad = median(abs(x - med) for x in recent)
    return med + max(p.k * MAD_TO_SIGMA * mad, p.min_rel_increase * abs(med))


def judge_step(loss: float, grad_norm: float | None, good_history: Sequence[float],
               p: SpikeParams) -> LossVerdict:
    """Classify one step's (global) loss and gradient norm against the recent good losses."""
    if is_nonfinite(loss):
        return LossVerdict(True, "nonfinite_loss", f"loss={loss}")
    if grad_norm is not None and is_nonfinite(grad_norm):
        return LossVerdict(True, "nonfinite_grad", f"grad_norm={grad_norm}")
    thr = spike_threshold(good_history, p)
    if thr is not None and loss > thr:
        return LossVerdict(True, "spike", f"loss={loss:.4f} > threshold={thr:.4f} "
                                          f"(median+{p.k}*1.4826*MAD over {p.window})")
    return LossVerdict(False, "ok")
