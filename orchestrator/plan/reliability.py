"""Failures, checkpoint cost, the Young/Daly checkpoint interval and the goodput it buys.

Default failure rate: the Llama 3 report (Meta, 2024, sec. 3.3.4) saw 419 unexpected interruptions in a
54-day snapshot of pre-training on 16,384 H100s, i.e. about 1.97e-5 interruptions per GPU-hour (a whole-job
MTBF of about 3.1 h at that scale). A job on N GPUs fails at N times the per-GPU rate (independent failures).

Young (1974) / Daly (2006), first order: with checkpoint cost C and job MTBF M, the interval that maximises
useful work is tau = sqrt(2*C*M), and the fraction of wall time doing useful work is approximately
1 - C/tau - (tau/2 + R)/M, where each failure costs on average half an interval of lost work plus a restart R.
It is accurate while C << tau << M; the plan says so when that does not hold.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from orchestrator.journal import read_journal

LLAMA3_INTERRUPTIONS = 419
LLAMA3_DAYS = 54
LLAMA3_GPUS = 16_384
DEFAULT_FAILURE_RATE = LLAMA3_INTERRUPTIONS / (LLAMA3_DAYS * 24 * LLAMA3_GPUS)
"""Unexpected interruptions per GPU-hour (Llama 3 405B pre-training)."""

DEFAULT_CKPT_BANDWIDTH_GBS = 5.0
"""Storage write bandwidth per node, GB/s: a conservative figure for a parallel file system client."""

CKPT_FIXED_S = 1.0
"""Size-independent part of an estimated save: barrier, fsync, manifest and commit marker (an assumption)."""

DEFAULT_RESTART_S = 300.0
"""Detect + relaunch + load checkpoint + warm up; an assumption, measure your own."""


@dataclass(frozen=True)
class CheckpointCost:
    """Seconds one checkpoint blocks training, and where that number came from."""

    seconds: float
    source: str
    size_bytes: float


@dataclass(frozen=True)
class Reliability:
    """Failure expectations and the checkpoint interval for one run."""

    failure_rate_per_gpu_hour: float
    job_mtbf_s: float
    expected_interruptions: float
    checkpoint: CheckpointCost
    restart_s: float
    interval_s: float
    interval_steps: int
    goodput: float
    configured_every_steps: int
    configured_goodput: float
    notes: list[str]


def job_mtbf_s(failure_rate_per_gpu_hour: float, gpus: int) -> float:
    """Mean time between failures of the whole job, in seconds."""
    return 3600.0 / (failure_rate_per_gpu_hour * gpus)


def young_daly_interval(ckpt_s: float, mtbf_s: float) -> float:
    """Optimal checkpoint interval sqrt(2*C*M), seconds (Young 1974; Daly 2006 first order)."""
    return math.sqrt(2.0 * ckpt_s * mtbf_s)


def goodput(interval_s: float, ckpt_s: float, mtbf_s: float, restart_s: float) -> float:
    """First-order useful fraction of wall time: 1 - C/tau - (tau/2 + R)/M, floored at 0."""
    return max(0.0, 1.0 - ckpt_s / interval_s - (interval_s / 2.0 + restart_s) / mtbf_s)


def measured_checkpoint_cost(run_dir: Path) -> tuple[float, int] | None:
    """Median ``save_s`` of the ``checkpoint`` events in RUN_DIR/journal.jsonl, and how many there were."""
    saves = [float(e["save_s"]) for e in read_journal(run_dir)
             if e.get("event") == "checkpoint" and isinstance(e.get("save_s"), int | float) and e["save_s"] >= 0]
    if not saves:
        return None
    return statistics.median(saves), len(saves)


def checkpoint_cost(size_bytes: float, nodes: int, bandwidth_gbs: float, run_dir: Path | None) -> CheckpointCost:
    """Measured cost if the run directory has saves, else size / (per-node bandwidth * nodes)."""
    if run_dir is not None:
        got = measured_checkpoint_cost(run_dir)
        if got is not None:
            return CheckpointCost(got[0], f"measured: median save_s of {got[1]} checkpoint(s) in "
                                  f"{run_dir}/journal.jsonl", size_bytes)
    secs = CKPT_FIXED_S + size_bytes / (bandwidth_gbs * 1e9 * max(nodes, 1))
    return CheckpointCost(secs, f"estimated: {size_bytes / 1e9:.3g} GB (weights + optimizer) at "
                          f"{bandwidth_gbs:g} GB/s per node x {nodes} node(s) + {CKPT_FIXED_S:g} s fixed",
                          size_bytes)


def plan_reliability(ckpt: CheckpointCost, gpus: int, compute_s: float, step_s: float, every_steps: int,
                     total_steps: int, failure_rate: float = DEFAULT_FAILURE_RATE,
                     restart_s: float = DEFAULT_RESTART_S) -> Reliability:
    """Interval, goodput and expected interruptions for a run of ``compute_s`` failure-free seconds."""
    mtbf = job_mtbf_s(failure_rate, gpus)
    c = max(ckpt.seconds, 1e-6)
    tau = young_daly_interval(c, mtbf)
    steps = max(1, round(tau / step_s)) if step_s > 0 else 1
    gp = goodput(tau, c, mtbf, restart_s)
    every_steps = every_steps if every_steps > 0 else steps  # 0: checkpoint.every_steps is 'auto'
    conf_gp = goodput(max(every_steps * step_s, 1e-9), c, mtbf, restart_s)
    wall_s = compute_s / gp if gp > 0 else math.inf
    notes = []
    if not c < tau < mtbf:
        notes.append("the first-order model needs C << tau << MTBF, which does not hold here: treat as rough")
    if steps >= total_steps:
        notes.append(f"the optimal interval is longer than the run ({total_steps} steps): one checkpoint at "
                     "the end, plus the one taken on the time-limit signal, is enough")
    if gp <= 0:
        notes.append("failures arrive faster than checkpoints can protect work: no progress expected")
    return Reliability(failure_rate_per_gpu_hour=failure_rate, job_mtbf_s=mtbf,
                       expected_interruptions=wall_s / mtbf if math.isfinite(wall_s) else math.inf,
                       checkpoint=ckpt, restart_s=restart_s, interval_s=tau, interval_steps=steps,
                       goodput=gp, configured_every_steps=every_steps, configured_goodput=conf_gp, notes=notes)


def state_size_bytes(n_params: int, precision: str) -> float:
    """Checkpoint size: weights plus Adam state (fp32 master + 2 moments under mixed precision), no gradients."""
    per = 2.0 + 12.0 if precision in ("bf16", "fp16") else 4.0 + 8.0
    return n_params * per
