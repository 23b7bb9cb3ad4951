"""Learning-rate schedule: linear warm-up, then cosine or linear decay reaching ``min_lr`` (zero by
default) exactly at the last step, as long runs need so that the final steps anneal."""

from __future__ import annotations

import math

from spec.config import ScheduleConfig


def lr_factor(step: int, total: int, sched: ScheduleConfig, base_lr: float) -> float:
    """Multiplier on the base LR for optimizer step ``step`` (0-based)."""
    if sched.warmup_steps and step < sched.warmup_steps:
        return (step + 1) / sched.warmup_steps
    if sched.decay == "constant":
        return 1.0
    span = max(1, total - sched.warmup_steps)
    progress = min(1.0, (step - sched.warmup_steps + 1) / span)
    floor = sched.min_lr / base_lr
    if sched.decay == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return floor + (1.0 - floor) * shape
