"""The collector renders every snapshot field as the documented series, read back from a private registry."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from orchestrator.metrics.exporter import SERIES, SnapshotCollector
from orchestrator.snapshot import FaultRecord, LostTime, RunSnapshot

NOW = 1_700_000_000.0


def _snapshot() -> RunSnapshot:
    faults = [FaultRecord("nan", 12, 1, 0, 0.1, "skip_step", t=NOW - 50),
              FaultRecord("nan", 13, 1, 0, 0.1, "skip_step", t=NOW - 40),
              FaultRecord("rank_crash", 30, 3, 1, 2.0, "relaunch", lost_steps=10, t=NOW - 20)]
    return RunSnapshot(
        name="exp1", state="RUNNING", step=42, total_steps=100, loss=2.5, eval_loss=2.7,
        grad_norm=0.9, lr=1e-3, tokens_per_s=1234.5, step_time_median_s=0.2, step_time_max_s=0.6,
        slowest_rank=3, node_step_time_s={"node0": 0.2, "node1": 0.6}, heartbeat_age_max_s=1.5, goodput=0.8, productive_s=80.0, wall_s=100.0,
        lost=LostTime(detection=2.0, restart=10.0, recomputation=5.0, checkpoint=3.0),
        restarts=1, attempt=1, excluded_nodes=["node1"], faults=faults,
        actions={"skip_step": 2, "relaunch": 1}, steps_lost_to_rollbacks=10, batches_skipped=2,
        last_checkpoint_step=40, last_checkpoint_t=NOW - 30.0, checkpoint_save_s=0.4,
        checkpoint_load_s=0.7, straggler_score_max=2.9, telemetry_rejected=4, started_t=NOW - 100)


@pytest.fixture
def registry() -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(_snapshot, clock=lambda: NOW, restart_budget=5))
    return reg


@pytest.mark.parametrize(("name", "expected"), [
    ("orchestrator_step", 42), ("orchestrator_total_steps", 100), ("orchestrator_loss", 2.5),
    ("orchestrator_eval_loss", 2.7), ("orchestrator_grad_norm", 0.9),
    ("orchestrator_tokens_per_second", 1234.5), ("orchestrator_step_time_median_seconds", 0.2),
    ("orchestrator_step_time_max_seconds", 0.6), ("orchestrator_slowest_rank", 3),
    ("orchestrator_heartbeat_age_max_seconds", 1.5), ("orchestrator_restarts_total", 1),
    ("orchestrator_steps_lost_to_rollbacks_total", 10), ("orchestrator_batches_skipped_total", 2),
    ("orchestrator_excluded_nodes", 1), ("orchestrator_checkpoint_age_seconds", 30.0),
    ("orchestrator_checkpoint_save_seconds", 0.4), ("orchestrator_checkpoint_load_seconds", 0.7),
    ("orchestrator_goodput_ratio", 0.8), ("orchestrator_straggler_score_max", 2.9),
    ("orchestrator_telemetry_rejected_total", 4), ("orchestrator_restart_budget", 5),
    ("orchestrator_last_checkpoint_step", 40), ("orchestrator_wall_seconds", 100.0),
])
def test_plain_series(registry: CollectorRegistry, name: str, expected: float) -> None:
    assert registry.get_sample_value(name, {"run": "exp1"}) == pytest.approx(expected)


def test_labelled_counters(registry: CollectorRegistry) -> None:
    get = registry.get_sample_value
    assert get("orchestrator_faults_total", {"run": "exp1", "kind": "nan"}) == 2
    assert get("orchestrator_faults_total", {"run": "exp1", "kind": "rank_crash"}) == 1
    assert get("orchestrator_faults_total", {"run": "exp1", "kind": "hang"}) == 0  # exists at 0
    assert get("orchestrator_actions_total", {"run": "exp1", "action": "relaunch"}) == 1
    assert get("orchestrator_actions_total", {"run": "exp1", "action": "rollback"}) == 0
    for cause, secs in {"detection": 2, "restart": 10, "recomputation": 5, "checkpoint": 3}.items():
        assert get("orchestrator_lost_seconds_total", {"run": "exp1", "cause": cause}) == secs


def test_state_is_one_hot(registry: CollectorRegistry) -> None:
    assert registry.get_sample_value("orchestrator_run_state", {"run": "exp1", "state": "RUNNING"}) == 1
    assert registry.get_sample_value("orchestrator_run_state", {"run": "exp1", "state": "FAILED"}) == 0


def test_unknown_state_still_exported() -> None:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(lambda: RunSnapshot(name="x", state="DRAINING")))
    assert reg.get_sample_value("orchestrator_run_state", {"run": "x", "state": "DRAINING"}) == 1


def test_node_step_times(registry: CollectorRegistry) -> None:
    get = registry.get_sample_value
    assert get("orchestrator_node_step_time_seconds", {"run": "exp1", "node": "node1"}) == pytest.approx(0.6)


def test_no_per_rank_series(registry: CollectorRegistry) -> None:
    """Cardinality must not grow with the ranks: no label other than run/state/kind/action/cause, and node
    (one series per node, 8x fewer than ranks: what a step-time-per-node panel needs)."""
    labels = {k for fam in registry.collect() for s in fam.samples for k in s.labels}
    assert labels <= {"run", "state", "kind", "action", "cause", "node", "reason"}


def test_every_documented_series_is_emitted(registry: CollectorRegistry) -> None:
    names = {s.name for fam in registry.collect() for s in fam.samples}
    assert set(SERIES) <= names


def test_missing_values_omit_series_and_nan_is_kept() -> None:
    snap = RunSnapshot(name="empty", loss=math.nan)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(lambda: snap, clock=lambda: NOW))
    assert math.isnan(reg.get_sample_value("orchestrator_loss", {"run": "empty"}))
    assert reg.get_sample_value("orchestrator_eval_loss", {"run": "empty"}) is None
    assert reg.get_sample_value("orchestrator_checkpoint_age_seconds", {"run": "empty"}) is None
    assert reg.get_sample_value("orchestrator_restart_budget", {"run": "empty"}) is None
    assert b"orchestrator_loss{run=\"empty\"} NaN" in generate_latest(reg)


def test_checkpoint_age_falls_back_to_start_and_follows_clock() -> None:
    now = [NOW]
    snap = RunSnapshot(name="c", started_t=NOW - 10)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(lambda: snap, clock=lambda: now[0]))
    assert reg.get_sample_value("orchestrator_checkpoint_age_seconds", {"run": "c"}) == 10
    snap.last_checkpoint_t = NOW + 5
    now[0] = NOW + 8
    assert reg.get_sample_value("orchestrator_checkpoint_age_seconds", {"run": "c"}) == 3


def test_snapshot_read_once_per_scrape() -> None:
    calls = []

    def snap() -> RunSnapshot:
        calls.append(1)
        return RunSnapshot(name="once")

    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(snap))
    assert calls == []  # registering does not read the supervisor's state
    generate_latest(reg)
    assert len(calls) == 1
