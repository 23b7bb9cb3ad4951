"""Cost per step of every detector at 1,024 and 16,384 ranks, and detection quality on the synthetic
suite. Target: under 1 ms per step at 16,384 ranks on one core for the per-step detectors.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_detectors.py
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from health.detectors.hang import LivenessLimits, assess_stall
from health.detectors.hardware import classify_exit
from health.detectors.loss_rules import SpikeParams, judge_step
from health.detectors.precision import audit_precision
from health.detectors.straggler import StragglerDetector
from health.detectors.synthetic import score_straggler, straggler_stream


def per_call_ms(fn: Callable[[int], object], n: int) -> float:
    fn(0)  # warm-up
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        fn(i)
    return (time.perf_counter() - t0) / n * 1e3


def timed_stream_ms(n: int, steps: int, as_array: bool) -> float:
    """Per-step cost of the straggler detector; each step's mapping is built just before, untimed, as
    the supervisor builds it from that step's telemetry (so it is warm in cache, as in production)."""
    times = straggler_stream(n, steps, slow_rank=n // 3, slow_from=steps // 2, seed=0)
    nodes = {r: f"node{r // 8}" for r in range(n)}
    det, total = StragglerDetector(), 0.0
    for i in range(steps):
        row = times[i].copy() if as_array else dict(enumerate(times[i].tolist()))
        t0 = time.perf_counter()
        det.observe_array(i, row, nodes) if as_array else det.observe(i, row, nodes)  # type: ignore[arg-type]
        if i:  # step 0 allocates the state
            total += time.perf_counter() - t0
    return total / (steps - 1) * 1e3


def bench_ranks(n: int, steps: int = 200) -> dict[str, float]:
    out = {"straggler.observe (mapping)": timed_stream_ms(n, steps, False),
           "straggler.observe_array": timed_stream_ms(n, steps, True)}
    now = 1000.0
    last_hb = {r: now - 0.1 for r in range(n)}
    nodes = {r: f"node{r // 8}" for r in range(n)}
    limits = LivenessLimits(10.0, 60.0, 1.0)
    out["hang.assess_stall (progressing)"] = per_call_ms(
        lambda i: assess_stall(now, now - 1.0, last_hb, nodes, set(), limits, True, False), steps)
    out["hang.assess_stall (stalled, every rank)"] = per_call_ms(
        lambda i: assess_stall(now, now - 30.0, last_hb, nodes, set(), limits, True, False), 20)
    good = [3.0 - 1e-4 * i for i in range(20)]
    out["loss_rules.judge_step (global loss)"] = per_call_ms(
        lambda i: judge_step(3.0 - 1e-4 * i, 1.0, good, SpikeParams()), steps)
    return out


def bench_events() -> dict[str, float]:
    tail = ("x\n" * 50) + "[Rank 3] Watchdog caught collective operation timeout: WorkNCCL(...)"
    dtypes = {f"model.layers.{i}.w": "torch.float32" for i in range(1000)}
    return {"hardware.classify_exit (per exit)": per_call_ms(lambda i: classify_exit(1, None, tail), 2000),
            "precision.audit (1000 tensors, per ckpt)":
                per_call_ms(lambda i: audit_precision(dtypes, "bf16", "bf16"), 200)}


def quality() -> None:
    print("\nsynthetic straggler suite (64 ranks, 5% noise, window=20 factor=1.5 min_steps=8)")
    for factor in (1.5, 2.0, 3.0):
        s = score_straggler(StragglerDetector(), straggler_stream(64, 400, 17, 200, factor, seed=1), 17, 200)
        print(f"  {factor:.1f}x slower from step 200: precision={s.precision:.2f} recall={s.recall:.2f} "
              f"delay={s.delay_steps} steps")
    fps = sum(score_straggler(StragglerDetector(), straggler_stream(64, 10_000, None, 0, seed=seed), None, 0)
              .false_positives for seed in range(3))
    print(f"  clean, 3 x 10,000 steps: false positives={fps}")


def main() -> None:
    for n in (1024, 16384):
        print(f"\n{n} ranks (ms per call)")
        res = bench_ranks(n)
        for k, v in res.items():
            print(f"  {k:40s} {v:8.3f}")
        fixed = res["hang.assess_stall (progressing)"] + res["loss_rules.judge_step (global loss)"]
        print(f"  {'per-step total, mapping API':40s} {res['straggler.observe (mapping)'] + fixed:8.3f}")
        per_step = res["straggler.observe_array"] + fixed
        print(f"  {'per-step total, array API':40s} {per_step:8.3f}")
    print("\nper event (ms)")
    for k, v in bench_events().items():
        print(f"  {k:40s} {v:8.3f}")
    quality()
    assert math.isfinite(per_step)


if __name__ == "__main__":
    main()
