"""Communication stragglers: every rank slower while compute is not (seeded, pure)."""

from __future__ import annotations

import numpy as np

from health.detectors.comm_slowdown import CommSlowdownDetector


def _play(det: CommSlowdownDetector, step_s: np.ndarray, compute_s: np.ndarray) -> list[tuple[int, int]]:
    out = []
    for step in range(len(step_s)):
        f = det.observe(step, float(step_s[step]), float(compute_s[step]))
        if f is not None:
            out.append((step, f.since_step))
    return out


def test_slow_link_found_within_a_window_of_its_onset() -> None:
    rng = np.random.default_rng(0)
    compute = 0.05 * np.exp(0.05 * rng.standard_normal(200))
    step = compute + 0.05 * np.exp(0.05 * rng.standard_normal(200))
    step[100:130] += 0.15  # the ring waits on one slow hop: the step triples, compute does not move
    found = _play(CommSlowdownDetector(), step, compute)
    assert [s for _, s in found] == [100], found
    assert found[0][0] - 100 <= 8


def test_slower_compute_is_not_a_network_problem() -> None:
    rng = np.random.default_rng(1)
    compute = 0.05 * np.exp(0.05 * rng.standard_normal(200))
    compute[100:] *= 3.0  # e.g. thermal throttling everywhere: compute slowed with the step
    step = compute + 0.05
    assert _play(CommSlowdownDetector(), step, compute) == []


def test_a_short_global_stall_and_a_quiet_run_raise_nothing() -> None:
    rng = np.random.default_rng(2)
    compute = 0.05 * np.exp(0.08 * rng.standard_normal(5000))
    step = compute + 0.05 * np.exp(0.08 * rng.standard_normal(5000))
    for s in range(200, 5000, 400):
        step[s:s + 3] *= 4.0  # a file-system stall of three steps, every 400 steps
    assert _play(CommSlowdownDetector(), step, compute) == []


def test_one_finding_per_episode_and_a_new_one_after_it_clears() -> None:
    compute = np.full(200, 0.05)
    step = np.full(200, 0.1)
    step[50:70] = 0.3
    step[120:140] = 0.3
    found = _play(CommSlowdownDetector(), step, compute)
    assert [s for _, s in found] == [50, 120]
