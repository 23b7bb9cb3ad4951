"""The straggler detector on field-like step times (heavy tails, drift, bursts, global stalls, slow
nodes, intermittent and TP/PP-coupled stragglers): recall within 20 steps and false positives per 100k
rank-steps, seeded. The full table (more trials) is `benchmarks/bench_straggler_field.py`."""

from __future__ import annotations

import pytest

from health.detectors.field_noise import SCENARIOS, evaluate
from health.detectors.straggler import StragglerDetector

BY_NAME = {s.name: s for s in SCENARIOS}
TRIALS = 4


def _score(name: str):  # type: ignore[no-untyped-def]
    return evaluate(BY_NAME[name], lambda: StragglerDetector(20, 1.4, 8), trials=TRIALS, seed=7)


@pytest.mark.parametrize("name", [s.name for s in SCENARIOS if "from step" in s.name or "node" in s.name
                                  or "group" in s.name])
def test_every_persistent_slowdown_found_within_20_steps(name: str) -> None:
    s = _score(name)
    assert s.recall is not None and s.recall >= 0.99, (name, s)


def test_field_noise_has_at_most_one_false_positive_per_100k_rank_steps() -> None:
    s = _score("field noise, no straggler (drift, bursts, global stalls)")
    assert s.fp_per_100k <= 1.0, s


def test_a_slow_peer_is_blamed_not_the_ranks_waiting_on_it() -> None:
    """PP pair: half of the slow stage's time leaks into its peer's compute; only the slow rank is named."""
    s = _score("PP group of 2, 50% of peer wait in compute, 1.5x")
    assert s.recall == 1.0 and s.fp_per_100k <= 1.0, s
