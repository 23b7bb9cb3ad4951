"""The spike rule early in training: real loss curves of the test model (``tests/data/loss_curves.json``:
three seeds of ``tests.conftest.BASE`` for 60 steps and the demo model (``examples/local.yaml``, its first
100 steps), trained in one process with the scheduled lr, and at every step
the loss the same weights give the same batch with half its samples' bytes corrupted (top bit flipped)).
While the loss falls fast the median band lags and is widened by the fall; the trend band must flag the
corrupted batches there without flagging any clean step.

Regenerate: train BASE with ``trainer.engine.Engine`` (world 1) for 60 steps and record ``eval_loss`` on
the half-corrupted batch before each update (the same procedure for every seed).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from health.detectors.loss_rules import SpikeParams, judge_step, spike_threshold

CURVES = json.loads((Path(__file__).parent / "data" / "loss_curves.json").read_text())
PARAMS = [SpikeParams(20, 6.0, 20, 0.1), SpikeParams(10, 6.0, 10, 0.1)]  # the default; the tests' BASE


def flagged_clean(clean: list[float], p: SpikeParams) -> list[int]:
    hist, out = [], []
    for i, x in enumerate(clean):
        if judge_step(x, 1.0, hist, p).bad:
            out.append(i)
        else:
            hist = (hist + [x])[-p.window:]
    return out


def caught(clean: list[float], bad: list[float], p: SpikeParams, lo: int, hi: int) -> tuple[int, int]:
    """(corrupted steps in [lo, hi] flagged, judged), each against the clean history before it."""
    n = total = 0
    for i in range(max(lo, p.warmup_steps), hi + 1):
        total += 1
        n += judge_step(bad[i], 1.0, clean[max(0, i - p.window):i], p).bad
    return n, total


@pytest.mark.parametrize("seed", sorted(CURVES))
@pytest.mark.parametrize("p", PARAMS, ids=["default", "tests"])
def test_no_clean_step_is_a_spike(seed: str, p: SpikeParams) -> None:
    assert flagged_clean(CURVES[seed]["clean"], p) == []


@pytest.mark.parametrize("seed", sorted(CURVES))
def test_half_corrupt_batches_early_in_training_are_flagged(seed: str) -> None:
    """Steps 12-22 (the falling part): the median rule flagged none of them with window 10 (the note on
    issue #19); the trend band flags at least 10 of 11, and every one judged with the default window."""
    c = CURVES[seed]
    n, total = caught(c["clean"], c["half_corrupt"], PARAMS[1], 12, 22)
    assert total == 11 and n >= 10, (n, total)
    n, total = caught(c["clean"], c["half_corrupt"], PARAMS[0], 12, 22)
    assert n == total == 3


def test_a_rising_or_flat_window_keeps_the_median_band() -> None:
    p = SpikeParams(10, 6.0, 10, 0.1)
    flat = [3.0, 3.1, 2.9, 3.05, 2.95, 3.0, 3.1, 2.9, 3.0, 3.02]
    rising = [2.0 + 0.1 * i for i in range(10)]
    for h in (flat, rising):
        from statistics import median
        med = median(h)
        mad = median(abs(x - med) for x in h)
        assert spike_threshold(h, p) == pytest.approx(med + max(6.0 * 1.4826 * mad, 0.1 * med))
    falling = [5.0 - 0.15 * i for i in range(10)]  # 5.0 → 3.65, a clean straight fall
    # the level is where the loss is now (the median of the last three, 3.8), not the window's median 4.325
    assert spike_threshold(falling, p) == pytest.approx(3.8 * 1.1)
