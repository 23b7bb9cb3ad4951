"""Young/Daly interval, goodput and checkpoint cost against hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from orchestrator.journal import Journal
from orchestrator.plan.reliability import (CKPT_FIXED_S, DEFAULT_FAILURE_RATE, checkpoint_cost, goodput,
                                           job_mtbf_s, plan_reliability, young_daly_interval)


def test_default_failure_rate_reproduces_llama3_mtbf() -> None:
    # 419 interruptions in 54 days on 16,384 GPUs: one every 54*24/419 = 3.093 h for the whole job.
    assert job_mtbf_s(DEFAULT_FAILURE_RATE, 16_384) / 3600 == pytest.approx(54 * 24 / 419)
    assert DEFAULT_FAILURE_RATE == pytest.approx(1.973e-5, rel=1e-3)


def test_young_daly_hand_computed() -> None:
    assert young_daly_interval(100.0, 20_000.0) == pytest.approx(2000.0)  # sqrt(2*100*20000)
    assert young_daly_interval(30.0, 3 * 3600.0) == pytest.approx(804.98, abs=0.01)  # sqrt(648000)


def test_goodput_hand_computed() -> None:
    # 1 - 100/2000 - (1000 + 300)/20000 = 1 - 0.05 - 0.065
    assert goodput(2000.0, 100.0, 20_000.0, 300.0) == pytest.approx(0.885)
    assert goodput(10.0, 100.0, 20_000.0, 300.0) == 0.0


def test_young_daly_interval_maximises_first_order_goodput() -> None:
    c, m, r = 45.0, 7200.0, 120.0
    tau = young_daly_interval(c, m)
    best = goodput(tau, c, m, r)
    assert all(goodput(tau * f, c, m, r) <= best for f in (0.5, 0.8, 0.95, 1.05, 1.25, 2.0))


def test_plan_reliability_interval_in_steps_and_interruptions() -> None:
    ckpt = checkpoint_cost(10e9, nodes=2, bandwidth_gbs=5.0, run_dir=None)
    assert ckpt.seconds == pytest.approx(CKPT_FIXED_S + 1.0)
    rel = plan_reliability(ckpt, gpus=1000, compute_s=86_400.0, step_s=2.0, every_steps=100, total_steps=43_200,
                           failure_rate=1e-4, restart_s=300.0)
    m = 3600 / (1e-4 * 1000)
    tau = math.sqrt(2 * 2.0 * m)
    assert rel.job_mtbf_s == pytest.approx(m)
    assert rel.interval_s == pytest.approx(tau)
    assert rel.interval_steps == round(tau / 2.0)
    assert rel.goodput == pytest.approx(1 - 2.0 / tau - (tau / 2 + 300) / m)
    assert rel.expected_interruptions == pytest.approx(86_400 / rel.goodput / m)


def test_measured_checkpoint_cost_from_journal(tmp_path: Path) -> None:
    with Journal(tmp_path) as j:
        for step, s in ((10, 2.0), (20, 6.0), (30, 4.0)):
            j.append("checkpoint", step=step, path=f"checkpoints/step_{step:08d}", save_s=s)
        j.append("eval", step=30, eval_loss=1.0)
    ckpt = checkpoint_cost(1e12, nodes=1, bandwidth_gbs=5.0, run_dir=tmp_path)
    assert ckpt.seconds == 4.0 and "measured" in ckpt.source and "3 checkpoint" in ckpt.source


def test_falls_back_to_estimate_without_checkpoint_events(tmp_path: Path) -> None:
    (tmp_path / "journal.jsonl").write_text('{"seq":0,"t":1,"event":"run_start"}\n')
    assert "estimated" in checkpoint_cost(5e9, 1, 5.0, tmp_path).source
