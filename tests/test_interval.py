"""Checkpoint intervals that set themselves: the estimates, Young/Daly per tier, the ranks' agreement, and
a local run with ``every_steps: auto`` that journals each change with its inputs."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

from orchestrator.interval import (IntervalTuner, aligned, estimate_mtbf, plan, storage_share,
                                   write_intervals)
from spec.layout import read_intervals
from orchestrator.plan.reliability import DEFAULT_FAILURE_RATE
from tests.conftest import run_submit
from trainer.intervals import Intervals


def test_mtbf_prior_is_llama3_scaled_and_observed_failures_dominate() -> None:
    prior = estimate_mtbf(16_384, 0, 0.0)
    assert math.isclose(prior.mtbf_s, 3600 / (DEFAULT_FAILURE_RATE * 16_384))  # ~3.1 h at Llama 3's scale
    assert 3.0 * 3600 < prior.mtbf_s < 3.3 * 3600
    seen = estimate_mtbf(4, 5, 100.0)  # five failures in 100 s on 4 ranks: the data dominate the prior
    assert 20.0 <= seen.mtbf_s <= 40.0
    quiet = estimate_mtbf(4, 0, 100.0)  # no failure yet: the prior (years at 4 GPUs), not infinity
    assert quiet.prior_mtbf_s <= quiet.mtbf_s <= 2 * quiet.prior_mtbf_s
    hist = estimate_mtbf(4, 0, 0.0, history_failures=10, history_exposure_s=3600.0)
    assert 300.0 <= hist.mtbf_s <= 800.0  # the lemon store's history counts as evidence too


def test_young_daly_per_tier_and_storage_share() -> None:
    assert storage_share(0, 0, memory_enabled=False) == 1.0
    assert storage_share(0, 0, memory_enabled=True) == 0.1
    assert storage_share(3, 3, memory_enabled=True) > 0.3  # restores kept needing storage
    p = plan(c_mem=0.01, c_storage=1.0, step_s=0.1, mtbf_s=600.0, share=0.1, restart_s=10.0, total_steps=10_000)
    assert p.memory_steps == round(math.sqrt(2 * 0.01 * 600 / 0.9) / 0.1)
    assert p.storage_steps == round(math.sqrt(2 * 1.0 * 6000) / 0.1)
    assert p.memory_steps < p.storage_steps and 0.9 < p.predicted_goodput < 1.0
    cheap = plan(None, 1.0, 0.1, 600.0, 1.0, 10.0, 10_000)  # no memory tier: storage alone
    assert cheap.storage_steps < p.storage_steps and cheap.predicted_goodput < p.predicted_goodput


def test_tuner_reports_a_change_once_with_its_inputs() -> None:
    t = IntervalTuner(gpus=4, total_steps=1000, memory_enabled=True, auto_memory=True, auto_storage=True,
                      memory_steps=1, storage_steps=10)
    assert t.retune(0, 10.0, (0, 0.0), 5.0) is None  # nothing measured yet
    for _ in range(10):
        t.on_step(0.1, 0.002)
    t.on_checkpoint(0.5)
    d = t.retune(3, 60.0, (0, 0.0), 5.0)
    assert d is not None and d["storage_every_steps"] != 10
    assert {"c_memory_s", "c_storage_s", "step_s", "mtbf_s", "prior_mtbf_s", "run_failures",
            "storage_share"} <= set(d["inputs"])
    assert t.retune(3, 60.0, (0, 0.0), 5.0) is None  # the same inputs: no change to journal


def test_memory_copies_never_rarer_than_storage_checkpoints() -> None:
    """No failure yet at 4 ranks: the prior's Young/Daly memory interval is the whole run, but a restore
    takes the newer tier, so the copy interval is capped at the storage interval (10)."""
    t = IntervalTuner(gpus=4, total_steps=600, memory_enabled=True, auto_memory=True, auto_storage=False,
                      memory_steps=1, storage_steps=10)
    for _ in range(10):
        t.on_step(0.1, 0.005)
    t.on_checkpoint(0.05)
    d = t.retune(0, 30.0, (0, 0.0), 5.0)
    assert d is not None and d["memory_every_steps"] == 10 and d["inputs"]["memory_interval_s"] > 60.0, d
    d = t.retune(5, 60.0, (0, 0.0), 5.0)  # failures seen: the measured rate sets a shorter interval
    assert d is not None and d["memory_every_steps"] < 10, d
    assert 10 % d["memory_every_steps"] == 0, d  # a divisor: every storage step has its memory copy


def test_storage_steps_fall_on_memory_copies_when_either_interval_is_automatic() -> None:
    """Storage is written from the memory copy of its step only when the copy interval divides it."""
    assert aligned(7, 10, auto_memory=True, auto_storage=False) == (5, 10)
    assert aligned(7, 10, auto_memory=True, auto_storage=True) == (5, 10)  # the cheap copies move first
    assert aligned(3, 100, auto_memory=False, auto_storage=True) == (3, 99)
    assert aligned(4, 10, auto_memory=True, auto_storage=False) == (2, 10)
    assert aligned(7, 11, auto_memory=True, auto_storage=False) == (7, 11)  # not a copy every step
    assert aligned(7, 11, auto_memory=True, auto_storage=True) == (7, 14)
    assert aligned(7, 10, auto_memory=False, auto_storage=False) == (7, 10)  # the user's, as set
    assert aligned(5, 10, auto_memory=True, auto_storage=True) == (5, 10)


def test_ranks_take_rank0s_intervals_through_the_allreduce(tmp_path: Path) -> None:
    cfg = SimpleNamespace(every_steps="auto", memory=SimpleNamespace(every_steps=2))
    write_intervals(tmp_path, 7, 33)
    assert read_intervals(tmp_path) == (7, 33)
    lead, other = Intervals(cfg, tmp_path, 0), Intervals(cfg, tmp_path, 1)
    sums = [a + b for a, b in zip(lead.counts(), other.counts())]  # what the all-reduce computes
    assert other.counts() == (0.0, 0.0)
    for r in (lead, other):
        r.agreed(sums)
        assert (r.memory, r.storage) == (2, 33)  # the fixed memory interval stays fixed


def test_auto_interval_run_journals_changes(tmp_path: Path) -> None:
    over = {"cluster": {"nodes": 1, "spare_nodes": 0}, "train": {"steps": 40},
            "checkpoint": {"every_steps": "auto", "memory": {"enabled": True, "every_steps": "auto"}},
            "chaos": [{"fault": "rank_crash", "step": 12, "rank": 1}]}
    r = run_submit(tmp_path, over)
    assert r.code == 0, r.status.get("reason")
    changes = r.events("interval")
    assert changes, "no interval change journaled"
    assert changes[-1]["inputs"]["run_failures"] >= 0 and changes[-1]["inputs"]["c_storage_s"] > 0
    assert all(c["storage_every_steps"] % c["memory_every_steps"] == 0 for c in changes), changes
    assert r.status["predicted_goodput"] is not None and r.status["intervals"]
    from orchestrator.report.html import write_report
    assert "predicted goodput" in write_report(r.run_dir).read_text()  # the report shows both
