"""Step-time streams that look like a production cluster, with known truth, for the straggler detector.

The clean Gaussian stream of :mod:`health.detectors.synthetic` flatters any detector. Real step times are
heavy-tailed (lognormal jitter plus rare long outliers), drift slowly per rank, have short bursts on one
rank that are not stragglers (garbage collection, a data-loader hiccup, a checkpoint write), global
stalls where every rank slows together (the file system, the network), whole slow nodes, stragglers that
come and go, and under tensor/pipeline parallelism a rank's measured compute time includes some waiting
on its slow peers. Each :class:`Scenario` builds one such stream; :func:`evaluate` scores a detector on it
with the figures a reviewer asks for: precision, recall within a step budget, delay, and false positives
per 100k rank-steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from health.detectors.straggler import StragglerDetector


@dataclass(frozen=True)
class Truth:
    """Which ranks are really slow, and from which step (``slow_from`` per rank; -1: never)."""

    slow_from: np.ndarray  # shape (ranks,)


@dataclass(frozen=True)
class Scenario:
    name: str
    build: Callable[[np.random.Generator], tuple[np.ndarray, Truth]]
    group: int = 1  # ranks per model-parallel group (TP/PP): what the detector is told


RANKS, STEPS, RPN = 64, 600, 8
ONSET = 300


def _base(rng: np.random.Generator, sigma: float = 0.08) -> np.ndarray:
    """Lognormal jitter around 1 s, plus rare 2-4x outliers (one rank-step in 2,000)."""
    t = np.exp(sigma * rng.standard_normal((STEPS, RANKS)))
    outliers = rng.random((STEPS, RANKS)) < 5e-4
    t[outliers] *= rng.uniform(2.0, 4.0, outliers.sum())
    return t


def _drift(rng: np.random.Generator, t: np.ndarray) -> None:
    """Each rank drifts slowly by up to ±5% over the run (thermals, background load): not a fault."""
    slope = rng.uniform(-0.05, 0.05, RANKS)
    t *= 1.0 + np.outer(np.linspace(0.0, 1.0, STEPS), slope)


def _bursts(rng: np.random.Generator, t: np.ndarray, per_rank: float = 3.0) -> None:
    """Short bursts on one rank (1-3 steps at 2-5x): GC, data loader, a checkpoint write."""
    n = rng.poisson(per_rank * RANKS)
    for _ in range(n):
        r, s, w = rng.integers(RANKS), rng.integers(STEPS), rng.integers(1, 4)
        t[s:s + w, r] *= rng.uniform(2.0, 5.0)


def _global_stalls(rng: np.random.Generator, t: np.ndarray) -> None:
    """Every rank slows together for a few steps (shared storage, network): nobody is a straggler."""
    for s in rng.integers(0, STEPS - 10, 6):
        t[s:s + rng.integers(2, 10)] *= rng.uniform(1.5, 4.0)


def _none() -> Truth:
    return Truth(np.full(RANKS, -1))


def _one_slow(factor: float) -> Callable[[np.random.Generator], tuple[np.ndarray, Truth]]:
    def build(rng: np.random.Generator) -> tuple[np.ndarray, Truth]:
        t = _base(rng)
        _drift(rng, t)
        _bursts(rng, t)
        r = int(rng.integers(RANKS))
        t[ONSET:, r] *= factor
        truth = _none()
        truth.slow_from[r] = ONSET
        return t, truth
    return build


def _clean_field(rng: np.random.Generator) -> tuple[np.ndarray, Truth]:
    t = _base(rng)
    _drift(rng, t)
    _bursts(rng, t)
    _global_stalls(rng, t)
    return t, _none()


def _heavy_tail(rng: np.random.Generator) -> tuple[np.ndarray, Truth]:
    t = _base(rng, sigma=0.15)
    _bursts(rng, t, per_rank=6.0)
    return t, _none()


def _slow_node(rng: np.random.Generator) -> tuple[np.ndarray, Truth]:
    t = _base(rng)
    _drift(rng, t)
    node = int(rng.integers(RANKS // RPN))
    ranks = slice(node * RPN, (node + 1) * RPN)
    t[ONSET:, ranks] *= 1.4
    truth = _none()
    truth.slow_from[ranks] = ONSET
    return t, truth


def _intermittent(rng: np.random.Generator) -> tuple[np.ndarray, Truth]:
    """1.5x slow for 6 steps out of every 10 (a throttling GPU): a straggler, though it comes and goes."""
    t = _base(rng)
    _drift(rng, t)
    r = int(rng.integers(RANKS))
    on = (np.arange(STEPS) - ONSET) % 10 < 6
    on[:ONSET] = False
    t[on, r] *= 1.5
    truth = _none()
    truth.slow_from[r] = ONSET
    return t, truth


def _coupled(group: int, leak: float) -> Callable[[np.random.Generator], tuple[np.ndarray, Truth]]:
    """TP/PP: each rank's measured compute includes ``leak`` of its group's slowest member's time."""
    def build(rng: np.random.Generator) -> tuple[np.ndarray, Truth]:
        t = _base(rng)
        _drift(rng, t)
        _bursts(rng, t)
        r = int(rng.integers(RANKS))
        t[ONSET:, r] *= 1.5
        g = t.reshape(STEPS, RANKS // group, group)
        worst = g.max(axis=2, keepdims=True)
        t = ((1 - leak) * g + leak * worst).reshape(STEPS, RANKS)
        truth = _none()
        truth.slow_from[r] = ONSET
        return t, truth
    return build


SCENARIOS = [
    Scenario("field noise, no straggler (drift, bursts, global stalls)", _clean_field),
    Scenario("heavy tail (lognormal 0.15, double bursts), no straggler", _heavy_tail),
    Scenario("one rank 1.3x from step 300", _one_slow(1.3)),
    Scenario("one rank 1.5x from step 300", _one_slow(1.5)),
    Scenario("one rank 3x from step 300", _one_slow(3.0)),
    Scenario("whole node 1.4x (8 ranks)", _slow_node),
    Scenario("intermittent 1.5x, 6 of every 10 steps", _intermittent),
    Scenario("TP group of 4, 30% of peer wait in compute, 1.5x", _coupled(4, 0.3), group=4),
    Scenario("PP group of 2, 50% of peer wait in compute, 1.5x", _coupled(2, 0.5), group=2),
]


@dataclass
class FieldScore:
    scenario: str
    trials: int
    slow_ranks: int = 0
    found_in_budget: int = 0
    false_positives: int = 0
    rank_steps: int = 0
    delays: list[int] | None = None

    @property
    def recall(self) -> float | None:
        return self.found_in_budget / self.slow_ranks if self.slow_ranks else None

    @property
    def fp_per_100k(self) -> float:
        return 1e5 * self.false_positives / max(self.rank_steps, 1)

    @property
    def precision(self) -> float:
        found = self.found_in_budget + self.false_positives
        return self.found_in_budget / found if found else 1.0

    @property
    def median_delay(self) -> float | None:
        return float(np.median(self.delays)) if self.delays else None


def evaluate(scenario: Scenario, make: Callable[[], StragglerDetector], trials: int, seed: int = 0,
             budget_steps: int = 20) -> FieldScore:
    """Replay ``trials`` seeded streams; a finding counts as found if it names a truly slow rank within
    ``budget_steps`` of its onset, as a false positive if it names a rank that was not slow then."""
    score = FieldScore(scenario.name, trials, delays=[])
    nodes = {r: f"node{r // RPN}" for r in range(RANKS)}
    for k in range(trials):
        times, truth = scenario.build(np.random.default_rng([seed, k]))
        det = make()
        if scenario.group > 1:
            det.set_groups(np.arange(RANKS) // scenario.group)
        found: dict[int, int] = {}
        for step in range(STEPS):
            for f in det.observe_array(step, times[step], nodes):
                onset = int(truth.slow_from[f.rank])
                if onset < 0 or step < onset:
                    score.false_positives += 1
                elif f.rank not in found:
                    found[f.rank] = step - onset
        slow = np.flatnonzero(truth.slow_from >= 0)
        score.slow_ranks += slow.size
        in_budget = [d for r, d in found.items() if d <= budget_steps]
        score.found_in_budget += len(in_budget)
        score.delays.extend(in_budget)  # type: ignore[union-attr]
        score.rank_steps += STEPS * RANKS
    return score
