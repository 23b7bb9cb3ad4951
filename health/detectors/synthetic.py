"""Synthetic telemetry with known truth, and the scoring of a detector against it.

Shared by the tests (which assert on the numbers) and ``benchmarks/bench_detectors.py`` (which prints
them), so both measure the same thing: precision, recall and detection delay in steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from health.detectors.straggler import StragglerDetector


def straggler_stream(n_ranks: int, steps: int, slow_rank: int | None, slow_from: int,
                     slow_factor: float = 1.5, noise: float = 0.05, seed: int = 0,
                     base_s: float = 1.0) -> np.ndarray:
    """Step times, shape (steps, n_ranks): Gaussian jitter of ``noise`` (relative) around ``base_s``;
    ``slow_rank`` is ``slow_factor`` times slower from ``slow_from`` on."""
    rng = np.random.default_rng(seed)
    t = base_s * (1.0 + noise * rng.standard_normal((steps, n_ranks)))
    if slow_rank is not None:
        t[slow_from:, slow_rank] *= slow_factor
    return np.maximum(t, 1e-6)


@dataclass(frozen=True)
class DetectionScore:
    true_positives: int
    false_positives: int
    false_negatives: int
    delay_steps: int | None  # first correct finding's step minus the fault's start

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        real = self.true_positives + self.false_negatives
        return self.true_positives / real if real else 1.0


def score_straggler(det: StragglerDetector, times: np.ndarray, slow_rank: int | None,
                    slow_from: int, ranks_per_node: int = 8) -> DetectionScore:
    """Replay ``times`` through ``det``; a finding is true if it names the slow rank after it slowed."""
    n = times.shape[1]
    nodes = {r: f"node{r // ranks_per_node}" for r in range(n)}
    tp = fp = 0
    delay: int | None = None
    for step in range(times.shape[0]):
        for f in det.observe(step, dict(enumerate(times[step].tolist())), nodes):
            if f.rank == slow_rank and step >= slow_from:
                tp += 1
                delay = step - slow_from if delay is None else delay
            else:
                fp += 1
    fn = 1 if slow_rank is not None and tp == 0 else 0
    return DetectionScore(tp, fp, fn, delay)
