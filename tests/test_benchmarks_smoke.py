"""Smoke tests for the benchmark scripts: they run with tiny parameters and print their tables.

The numbers are not checked (the machine is shared); what is checked is that the scripts still work
against the code they measure, so BENCHMARKS.md can always be regenerated. Heavy ones are ``slow``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import sim_at_scale  # noqa: E402
from benchmarks.common import ledger_from_rows  # noqa: E402


def test_sim_prints_policies_and_bound(capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_at_scale.main(["--trials", "5", "--days", "2"]) == 0
    out = capsys.readouterr().out
    for name in ("| ours |", "| baseline |", "young-daly bound (ours costs)", "at their Young/Daly interval"):
        assert name in out


def test_sim_baseline_at_its_best_and_sensitivity(capsys: pytest.CaptureFixture[str]) -> None:
    """Same spares for both; the baseline checkpoints at its own optimum; costs come from measured.json."""
    from benchmarks.measured import values
    a = sim_at_scale.parse(["--trials", "5", "--days", "2"])
    assert a.sync_save_s == values()["sync_save_s"]  # not a constant in the script
    pols = sim_at_scale.policies(a, 3600.0)
    assert pols["baseline"].spares == pols["ours"].spares == a.spares
    assert pols["baseline"].interval_s == sim_at_scale.young_daly_interval(a.sync_save_s, 3600.0)
    rows = sim_at_scale.sensitivity(a)
    assert [r["case"] for r in rows] == ["as measured", "MTBF x0.5", "MTBF x2", "restart x0.5", "restart x2"]
    by = {r["case"]: r for r in rows}
    assert by["MTBF x0.5"]["ours"] < by["as measured"]["ours"] < by["MTBF x2"]["ours"]


def test_sim_is_seeded_and_ours_beats_baseline() -> None:
    a = sim_at_scale.parse(["--trials", "20", "--days", "5", "--preset", "at-scale"])
    r1, r2 = sim_at_scale.run(a), sim_at_scale.run(a)
    assert r1 == r2
    by = {r["policy"]: r["goodput_mean"] for r in r1}
    assert 0 < by["baseline"] < by["ours"] <= 1
    assert by["ours"] < by["ours+memory"] <= 1  # resuming from the memory copy loses less work


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
    assert bench_supervisor.main(["ingest", "--ranks", "64", "--seconds", "2", "--mode",
                                  "components,real,full,full-agg"]) == 0
    out = capsys.readouterr().out
    assert "| components | 64 |" in out and "| real | 64 |" in out and "| full | 64 |" in out
    for mode in ("full", "full-agg"):  # the real Supervisor received the senders' (ranks', relays') datagrams
        row = next(line for line in out.splitlines() if line.startswith(f"| {mode} | 64 |")).split("|")
        assert int(row[5]) > 0, row


@pytest.mark.slow
def test_checkpoint_benchmark_small(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import bench_checkpoint
    assert bench_checkpoint.main(["--sizes-mb", "2", "--repeats", "1"]) == 0
    assert "async_block_s" in capsys.readouterr().out


@pytest.mark.slow
def test_goodput_vs_torchrun_clean(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import bench_goodput_vs_torchrun
    assert bench_goodput_vs_torchrun.main(["--scenarios", "clean", "--steps", "12", "--repeats", "1",
                                           "--launchers", "orchestrator,torchrun"]) == 0
    assert "| clean | torchrun |" in capsys.readouterr().out


def test_measured_costs_are_recorded_with_their_source(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from benchmarks.measured import load, record, values
    from benchmarks.record_measured import checkpoint_costs
    p = tmp_path / "measured.json"
    record({"load_s": 1.5}, "unit test", path=p)
    record({"sync_save_s": 2.0}, "unit test 2", path=p)
    assert values(p) == {"load_s": 1.5, "sync_save_s": 2.0}
    entry = load(p)["load_s"]
    assert entry["source"] == "unit test" and entry["date"] and entry["machine"]["nproc"]
    ck = tmp_path / "ck.json"
    ck.write_text(json.dumps({"bench": "checkpoint", "rows": [
        {"size_mb": 10, "sync_save_s": 0.1, "load_s": 0.05, "bg_staging_until_staged_s": 0.01},
        {"size_mb": 1000, "sync_save_s": 0.7, "load_s": 0.6, "bg_staging_until_staged_s": 0.26}]}) + "\n")
    assert checkpoint_costs(ck) == {"sync_save_s": 0.7, "load_s": 0.6, "async_block_s": 0.26}
