"""Smoke tests for the benchmark scripts: they run with tiny parameters and print their tables.

The numbers are not checked (the machine is shared); what is checked is that the scripts still work
against the code they measure, so BENCHMARKS.md can always be regenerated. Heavy ones are ``slow``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import sim_at_scale  # noqa: E402
from benchmarks.common import ledger_from_rows  # noqa: E402


def test_sim_prints_policies_and_bound(capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_at_scale.main(["--trials", "5", "--days", "2"]) == 0
    out = capsys.readouterr().out
    for name in ("| ours |", "| baseline |", "young-daly bound (ours costs)", "our interval"):
        assert name in out


def test_sim_is_seeded_and_ours_beats_baseline() -> None:
    a = sim_at_scale.parse(["--trials", "20", "--days", "5", "--preset", "at-scale"])
    r1, r2 = sim_at_scale.run(a), sim_at_scale.run(a)
    assert r1 == r2
    by = {r["policy"]: r["goodput_mean"] for r in r1}
    assert 0 < by["baseline"] < by["ours"] <= 1


def test_work_by_counts_only_durable_checkpoints() -> None:
    c = sim_at_scale.Costs({}, 0, 0, block_s=1.0, write_s=3.0, interval_s=10.0, requeue_s=0, spares=0,
                           repair_s=0, soft_in_step=True, step_s=1)
    assert sim_at_scale.work_by(11.5, c) == (10.5, 0.0)  # the first checkpoint is still being written
    assert sim_at_scale.work_by(13.5, c) == (12.5, 10.0)


def test_ledger_counts_redone_and_skipped_steps() -> None:
    led = ledger_from_rows([{"step": 0, "step_time": 1.0}, {"step": 1, "step_time": 1.0},
                            {"step": 1, "step_time": 2.0}, {"step": 2, "step_time": 1.0, "skipped": True}])
    assert led.productive_s == 3.0 and led.recomputed_s == 2.0
    assert (led.recomputed_steps, led.skipped_steps) == (1, 1)


def test_ingest_benchmark_tiny(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import bench_supervisor
    assert bench_supervisor.main(["ingest", "--ranks", "64", "--seconds", "2"]) == 0
    out = capsys.readouterr().out
    assert "| components | 64 |" in out and "| real | 64 |" in out


@pytest.mark.slow
def test_checkpoint_benchmark_small(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import bench_checkpoint
    assert bench_checkpoint.main(["--sizes-mb", "2", "--repeats", "1"]) == 0
    assert "async_block_s" in capsys.readouterr().out


@pytest.mark.slow
def test_goodput_vs_torchrun_clean(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import bench_goodput_vs_torchrun
    assert bench_goodput_vs_torchrun.main(["--scenarios", "clean", "--steps", "12"]) == 0
    assert "| clean | torchrun |" in capsys.readouterr().out
