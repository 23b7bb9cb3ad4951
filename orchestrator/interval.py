"""Checkpoint intervals that set themselves (``checkpoint.every_steps: auto``, and the memory tier's).

Why: the right interval depends on what a checkpoint costs here and how often this job fails, and both
are measured as the run goes. Inputs: each tier's blocking cost C (medians of what the ranks report), the
step time, and the job's MTBF, estimated by a Gamma-Poisson update of a published prior with this run's
failures and the lemon-node store's history. Output: Young/Daly intervals per tier, sqrt(2*C*M), where a
tier's M counts only the failures that tier must recover (storage: those the memory tier could not).

Prior: the Llama 3 report's 419 unexpected interruptions in 54 days on 16,384 GPUs (about 1.97e-5 per
GPU-hour), scaled to this job's GPU count (ranks on CPU), weighted as one failure's worth of evidence so a
few observed failures dominate it (it weighs as much exposure as the run has seen, at most one
failure). Storage's share of failures: Beta(1, 9) prior (1 in 10), updated with
how often a restore had to come from storage in this run.

Multi-level first-order goodput (Young/Daly per tier, as in SCR's multi-level model):
``1 - Cm/Tm - Cs/Ts - ((1-p)(Tm/2 + R) + p(Ts/2 + R)) / M``.
Pure functions and a small stateful :class:`IntervalTuner`; the supervisor feeds it and journals changes.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestrator.plan.reliability import DEFAULT_FAILURE_RATE, job_mtbf_s, young_daly_interval
from spec.layout import INTERVALS_FILE
from trainer.fence import atomic_write

STORAGE_PRIOR = (1.0, 9.0)  # Beta prior on the share of failures only storage can recover
WINDOW = 64
PRIOR_MIN_EXPOSURE_S = 60.0


@dataclass(frozen=True)
class MtbfEstimate:
    mtbf_s: float
    prior_mtbf_s: float
    run_failures: int
    run_exposure_s: float
    history_failures: int
    history_exposure_s: float


def estimate_mtbf(gpus: int, run_failures: int, run_exposure_s: float, history_failures: int = 0,
                  history_exposure_s: float = 0.0, rate: float = DEFAULT_FAILURE_RATE) -> MtbfEstimate:
    """Posterior mean of the job's time between failures, Gamma-Poisson: (E0 + exposure) / (E0/M0 + failures).

    The prior (mean M0, the published rate scaled to ``gpus``) weighs as much exposure E0 as the evidence
    has, and at most one failure's worth (E0 <= M0): on a small job whose prior MTBF is years, a few
    minutes with several failures must not be drowned by a year of imaginary failure-free exposure."""
    prior = job_mtbf_s(rate, max(gpus, 1))
    exposure = run_exposure_s + history_exposure_s
    e0 = min(prior, max(exposure, PRIOR_MIN_EXPOSURE_S))
    failures = run_failures + history_failures
    m = (e0 + exposure) / (e0 / prior + failures)
    return MtbfEstimate(m, prior, run_failures, run_exposure_s, history_failures, history_exposure_s)


def storage_share(storage_restores: int, restores: int, memory_enabled: bool) -> float:
    """Share of failures the storage tier must recover (all of them without a memory tier)."""
    if not memory_enabled:
        return 1.0
    a, b = STORAGE_PRIOR
    return (a + storage_restores) / (a + b + restores)


@dataclass(frozen=True)
class Plan:
    memory_steps: int
    storage_steps: int
    memory_interval_s: float
    storage_interval_s: float
    predicted_goodput: float


def plan(c_mem: float | None, c_storage: float, step_s: float, mtbf_s: float, share: float, restart_s: float,
         total_steps: int) -> Plan:
    """Young/Daly per tier, in steps (at least 1, at most the run), and the goodput it predicts."""
    def steps(tau: float) -> int:
        return int(min(max(1, round(tau / max(step_s, 1e-9))), max(total_steps, 1)))
    ts = young_daly_interval(max(c_storage, 1e-6), mtbf_s / max(share, 1e-9))
    s_steps = steps(ts)
    lost = share * (s_steps * step_s / 2 + restart_s)
    cost = max(c_storage, 0.0) / (s_steps * step_s)
    m_steps, tm = 0, 0.0
    if c_mem is not None:
        tm = young_daly_interval(max(c_mem, 1e-6), mtbf_s / max(1.0 - share, 1e-9))
        m_steps = steps(tm)
        lost += (1.0 - share) * (m_steps * step_s / 2 + restart_s)
        cost += c_mem / (m_steps * step_s)
    else:
        lost += (1.0 - share) * restart_s
    return Plan(m_steps, s_steps, tm, ts, max(0.0, 1.0 - cost - lost / mtbf_s))


def aligned(mem: int, st: int, auto_memory: bool, auto_storage: bool) -> tuple[int, int]:
    """A storage checkpoint is written from the memory copy of its step (no second copy, no staging wait
    on the training path) only when the copy interval divides the storage interval. Move whichever of
    the two is automatic: the copy interval first (copies are the cheap tier), down to the largest
    divisor of the storage interval if that is at least half of it; else the storage interval, to the
    nearest multiple of the copy interval. Two fixed intervals, or no good divisor and a fixed storage
    interval, stay as they are (storage then stages its own copy)."""
    if mem <= 0 or st % mem == 0:
        return mem, st
    if auto_memory:
        divisor = max(d for d in range(1, mem + 1) if st % d == 0)
        if 2 * divisor >= mem:
            return divisor, st
    if auto_storage:
        return mem, max(mem, round(st / mem) * mem)
    return mem, st


def write_intervals(run_dir: Path, memory_steps: int, storage_steps: int) -> None:
    atomic_write(Path(run_dir) / INTERVALS_FILE,
                 json.dumps({"memory": memory_steps, "storage": storage_steps}).encode())


class IntervalTuner:
    """Collects the measurements and decides when the intervals change enough to re-tune."""

    def __init__(self, gpus: int, total_steps: int, memory_enabled: bool, auto_memory: bool,
                 auto_storage: bool, memory_steps: int, storage_steps: int) -> None:
        self.gpus, self.total, self.memory_enabled = gpus, total_steps, memory_enabled
        self.auto_memory, self.auto_storage = auto_memory, auto_storage
        self.memory_steps, self.storage_steps = memory_steps, storage_steps
        self.mem_costs: deque[float] = deque(maxlen=WINDOW)
        self.storage_costs: deque[float] = deque(maxlen=WINDOW)
        self.step_times: deque[float] = deque(maxlen=WINDOW)
        self.restores = {"memory": 0, "storage": 0}
        self.last: dict[str, Any] | None = None

    @property
    def active(self) -> bool:
        return self.auto_memory or self.auto_storage

    def on_step(self, step_s: float, mem_block_s: float | None) -> None:
        if step_s > 0:
            self.step_times.append(step_s)
        if mem_block_s:
            self.mem_costs.append(mem_block_s)

    def on_checkpoint(self, save_s: float) -> None:
        self.storage_costs.append(save_s)

    def on_restore(self, tier: str) -> None:
        self.restores[tier] = self.restores.get(tier, 0) + 1

    def retune(self, failures: int, exposure_s: float, history: tuple[int, float],
               restart_s: float) -> dict[str, Any] | None:
        """New intervals and every input behind them, or None when nothing is measured yet / nothing moved."""
        if not self.step_times or not self.storage_costs:
            return None
        mt = estimate_mtbf(self.gpus, failures, exposure_s, *history)
        share = storage_share(self.restores["storage"], sum(self.restores.values()), self.memory_enabled)
        c_mem = statistics.median(self.mem_costs) if self.memory_enabled and self.mem_costs else None
        c_st = statistics.median(self.storage_costs)
        step_s = statistics.median(self.step_times)
        p = plan(c_mem, c_st, step_s, mt.mtbf_s, share, restart_s, self.total)
        st = p.storage_steps if self.auto_storage else self.storage_steps
        # a restore takes the newer of the two tiers, so a memory copy rarer than storage checkpoints is
        # never used; capped, the first failure (while the prior still says failures are rare) restores
        # from memory at the storage interval instead of from storage (the demo: 10 s against 0.3 s)
        mem = min(p.memory_steps, st) if self.auto_memory and p.memory_steps else self.memory_steps
        if self.memory_enabled:
            mem, st = aligned(mem, st, self.auto_memory, self.auto_storage)
        decision = {"memory_every_steps": mem, "storage_every_steps": st,
                    "predicted_goodput": round(p.predicted_goodput, 4),
                    "inputs": {"c_memory_s": c_mem, "c_storage_s": c_st, "step_s": step_s,
                               "storage_share": round(share, 4), "restart_s": restart_s,
                               "memory_interval_s": p.memory_interval_s, "storage_interval_s": p.storage_interval_s,
                               **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(mt).items()}}}
        self.last = decision
        if (mem, st) == (self.memory_steps, self.storage_steps):
            return None
        self.memory_steps, self.storage_steps = mem, st
        return decision


def finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
