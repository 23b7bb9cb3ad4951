"""NaN/Inf and loss-spike rules: one implementation shared by the trainer's in-step guard and the
supervisor's detectors, so both always agree on what a bad step is.

Spike rule: after ``warmup_steps`` good steps, a loss is a spike when it exceeds the median of the last
``window`` good losses by more than ``k`` robust standard deviations (1.4826 * MAD) *and* by at least
``min_rel_increase`` of the median (so a flat, noise-free loss curve does not flag tiny wiggles). While
the window falls, the same band is also taken around a robust line through it (``spike_threshold``), so
a bad batch early in training is not hidden by the fall itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spec.config import SpikeRule

MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class SpikeParams:
    window: int = 20
    k: float = 6.0
    warmup_steps: int = 20
    min_rel_increase: float = 0.1


def params_from_rule(rule: SpikeRule) -> SpikeParams:
    """run.yaml's ``policy.spike`` as the rule's parameters (the trainer's guard and replay use them)."""
    return SpikeParams(window=rule.window, k=rule.k, warmup_steps=rule.warmup_steps,
                       min_rel_increase=rule.min_rel_increase)


@dataclass(frozen=True)
class LossVerdict:
    bad: bool
    rule: str  # "ok" | "nonfinite_loss" | "nonfinite_grad" | "spike"
    detail: str = ""


def is_nonfinite(x: float | None) -> bool:
    return x is None or not math.isfinite(x)


def _band(level: float, spread: float, p: SpikeParams) -> float:
    return level + max(p.k * MAD_TO_SIGMA * spread, p.min_rel_increase * abs(level))


def _falling_trend(recent: Sequence[float], p: SpikeParams) -> tuple[float, float] | None:
    """A robust straight line through the window (Theil-Sen: the median pairwise slope, the median
    intercept): (its value at the newest step, the MAD of the residuals). None unless the loss falls
    across the window by more than the band is wide: a gentle drift is noise the median band handles."""
    n = len(recent)
    slope = median((recent[j] - recent[i]) / (j - i) for i in range(n) for j in range(i + 1, n))
    icept = median(x - slope * i for i, x in enumerate(recent))
    resid = [x - (icept + slope * i) for i, x in enumerate(recent)]
    mid = median(resid)
    spread = median(abs(r - mid) for r in resid)
    if not -slope * (n - 1) > p.k * MAD_TO_SIGMA * spread:
        return None
    level = max(icept + slope * (n - 1), median(recent[-3:]))  # never below where the loss is now
    return level, spread


def spike_threshold(history: Sequence[float], p: SpikeParams) -> float | None:
    """The loss above which the next step is a spike, or None while still warming up.

    While the loss falls, the window's median lags behind the current loss and the fall itself widens
    the MAD, so a median band is loose exactly when a model is most fragile (early training). The band
    is therefore also taken around a robust line through the window, at its newest step, with the
    residuals' MAD; the lower of the two bands is used, and only while the fall across the window is
    wider than that band (a flat, drifting or rising window keeps the median band: a slow climb must not
    widen the band in front of a divergence, and late-training noise must not narrow it)."""
    if len(history) < max(p.warmup_steps, 4):
        return None
    recent = list(history[-p.window:])
    med = median(recent)
    flat = _band(med, median(abs(x - med) for x in recent), p)
    trend = _falling_trend(recent, p)
    return flat if trend is None else min(flat, _band(*trend, p))


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
