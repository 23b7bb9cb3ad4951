"""Straggler detector on synthetic streams with known truth (seeded): delay, precision, recall."""

from __future__ import annotations

import numpy as np
import pytest

from health.detectors.straggler import StragglerDetector, median_of_others
from health.detectors.synthetic import score_straggler, straggler_stream


def test_median_of_others_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    for n in range(2, 14):
        for _ in range(50):
            t = rng.integers(0, 4, n).astype(float)
            ref = np.array([np.median(np.delete(t, i)) for i in range(n)])
            np.testing.assert_allclose(median_of_others(t), ref)


def test_slow_rank_found_within_20_steps() -> None:
    times = straggler_stream(64, 400, slow_rank=17, slow_from=200, slow_factor=1.5, noise=0.05, seed=0)
    det = StragglerDetector(window=20, factor=1.5, min_steps=8)
    s = score_straggler(det, times, 17, 200)
    print(f"precision={s.precision:.2f} recall={s.recall:.2f} delay={s.delay_steps} steps")
    assert s.recall == 1.0 and s.precision == 1.0
    assert s.delay_steps is not None and s.delay_steps <= 20


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_false_positive_on_10000_clean_steps(seed: int) -> None:
    times = straggler_stream(64, 10_000, slow_rank=None, slow_from=0, noise=0.05, seed=seed)
    s = score_straggler(StragglerDetector(), times, None, 0)
    assert s.false_positives == 0


def test_finding_fields_and_worst_node() -> None:
    times = straggler_stream(16, 60, slow_rank=5, slow_from=20, slow_factor=2.0, seed=3)
    det = StragglerDetector()
    nodes = {r: f"node{r // 4}" for r in range(16)}
    found = []
    for step in range(60):
        found += det.observe(step, dict(enumerate(times[step].tolist())), nodes)
    assert len(found) == 1  # raised once, not again every step
    f = found[0]
    assert (f.rank, f.node, f.since_step) == (5, "node1", 20)
    assert 1.8 < f.score < 2.2 and f.confidence == 1.0
    assert det.worst_node() is not None and det.worst_node()[0] == "node1"  # type: ignore[index]
    assert det.scores()[5] > 1.8 and abs(det.scores()[0] - 1.0) < 0.1
    assert det.flagged() == [5]
    det.reset()
    assert det.scores() == {} and det.worst_node() is None


def test_cleared_and_raised_again_after_recovery() -> None:
    times = straggler_stream(8, 150, slow_rank=2, slow_from=10, slow_factor=2.0, seed=4)
    times[50:100, 2] /= 2.0  # recovers for 50 steps, then slow again
    det = StragglerDetector()
    raised = [step for step in range(150)
              for _ in det.observe(step, dict(enumerate(times[step].tolist())), {})]
    assert len(raised) == 2 and raised[0] < 30 and 100 <= raised[1] < 120


def test_missing_rank_time_is_not_slow() -> None:
    det = StragglerDetector(min_steps=2, window=4)
    for step in range(10):
        assert det.observe(step, {0: 1.0, 1: 1.0, 2: float("nan")}, {}) == []


def test_invalid_parameters_rejected() -> None:
    with pytest.raises(ValueError, match="min_steps"):
        StragglerDetector(window=4, min_steps=8)
    with pytest.raises(ValueError, match="factor"):
        StragglerDetector(factor=1.0)


def test_array_api_agrees_with_mapping_api() -> None:
    times = straggler_stream(32, 80, slow_rank=9, slow_from=30, seed=5)
    a, b = StragglerDetector(), StragglerDetector()
    for step in range(80):
        fa = a.observe(step, dict(enumerate(times[step].tolist())), {})
        fb = b.observe_array(step, times[step], {})
        assert fa == fb
    assert a.scores() == b.scores() and a.flagged() == b.flagged() == [9]


def test_episode_is_dated_from_the_slowdown_not_an_earlier_noisy_step() -> None:
    """A lone slow step at 55 then a real 3x slowdown from 60: the finding says since 60."""
    det = StragglerDetector(window=20, factor=1.5, min_steps=8)
    nodes = {r: f"node{r // 2}" for r in range(4)}
    findings = []
    for step in range(40, 80):
        t = {r: 1.0 for r in range(4)}
        if step == 55 or step >= 60:
            t[1] = 3.0
        findings += det.observe(step, t, nodes)
    assert [f.since_step for f in findings] == [60]


def test_episode_start_keeps_a_gap_shorter_than_the_slow_run() -> None:
    from health.detectors.straggler import episode_start
    slow = np.array([0, 0, 1, 1, 1, 0, 1, 1, 1, 1], dtype=bool)
    assert episode_start(slow) == 2  # one normal step inside a long slow run does not split it
    assert episode_start(np.array([1, 0, 0, 0, 1, 1], dtype=bool)) == 4
    assert episode_start(np.zeros(5, dtype=bool)) == 0
