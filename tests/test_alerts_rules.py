"""The Python evaluators: each rule fires on the snapshot it is about and not on a healthy one."""

from __future__ import annotations

import math
import re
from datetime import datetime

import pytest
import yaml

from orchestrator.metrics.alerts import (RULES, AlertTracker, Limits, firing_alerts, rule_names,
                                         rules_text)
from orchestrator.snapshot import FaultRecord, RunSnapshot

NOW = 1_700_000_000.0
REQUIRED = {"TrainingStalled", "NaNLoss", "LossSpike", "StragglerDetected", "NodeExcluded",
            "RestartLoop", "CheckpointStale", "GoodputLow", "RestartBudgetExhausted", "TransientFault"}


def healthy() -> RunSnapshot:
    return RunSnapshot(name="r", state="RUNNING", step=50, loss=2.0, heartbeat_age_max_s=0.5,
                       straggler_score_max=1.05, goodput=0.95, wall_s=3600, started_t=NOW - 3600,
                       last_checkpoint_t=NOW - 60, restarts=0)


def fault(kind: str, action: str, ago: float) -> FaultRecord:
    return FaultRecord(kind, 10, 0, 0, 0.1, action, t=NOW - ago)


TRIGGERS = {
    "TrainingStalled": dict(heartbeat_age_max_s=120.0),
    "NaNLoss": dict(loss=math.nan),
    "LossSpike": dict(faults=[fault("bad_data", "skip_step", 30)]),
    "TransientFault": dict(faults=[fault("transient_fault", "apply_clean", 1800)]),
    "StragglerDetected": dict(straggler_score_max=3.0),
    "NodeExcluded": dict(excluded_nodes=["node3"]),
    "RestartLoop": dict(faults=[fault("rank_crash", "relaunch", a) for a in (10, 200, 600)]),
    "CheckpointStale": dict(last_checkpoint_t=NOW - 4000),
    "GoodputLow": dict(goodput=0.4),
    "RestartBudgetExhausted": dict(restarts=5),
    "RunFailed": dict(state="FAILED"),
}


def names(alerts: list[dict]) -> set[str]:
    return {a["labels"]["alertname"] for a in alerts}


def test_required_rules_present_and_unique() -> None:
    assert REQUIRED <= set(rule_names())
    assert len(rule_names()) == len(set(rule_names())) == len(TRIGGERS)


def test_yaml_names_agree_with_evaluators() -> None:
    doc = yaml.safe_load(rules_text())
    assert [r["alert"] for r in doc["groups"][0]["rules"]] == rule_names()
    for rule, yrule in zip(RULES, doc["groups"][0]["rules"], strict=True):
        assert yrule["expr"] == rule.expr and yrule["labels"]["severity"] == rule.severity


def test_healthy_run_fires_nothing() -> None:
    assert firing_alerts(healthy(), NOW, limits=Limits(restart_budget=5)) == []


@pytest.mark.parametrize("alertname", sorted(TRIGGERS))
def test_each_rule_fires_alone_on_its_trigger(alertname: str) -> None:
    snap = healthy()
    for k, v in TRIGGERS[alertname].items():
        setattr(snap, k, v)
    fired = firing_alerts(snap, NOW, limits=Limits(restart_budget=5))
    assert names(fired) == {alertname}


def test_running_only_rules_quiet_after_completion() -> None:
    snap = healthy()
    snap.state, snap.heartbeat_age_max_s, snap.straggler_score_max = "COMPLETED", 999.0, 9.0
    snap.last_checkpoint_t = NOW - 99_999
    assert firing_alerts(snap, NOW) == []


def test_windows_expire() -> None:
    snap = healthy()
    snap.faults = [fault("nan", "skip_step", 301), fault("loss_spike", "rollback", 601),
                   fault("dynamics", "alert", 601), fault("transient_fault", "apply_clean", 3601)]
    snap.faults += [fault("hang", "relaunch", a) for a in (10, 20, 901)]
    assert firing_alerts(snap, NOW) == []


def test_budget_from_limits_or_missing() -> None:
    snap = healthy()
    snap.restarts = 2
    assert firing_alerts(snap, NOW) == []  # unknown budget: cannot say it is exhausted
    assert names(firing_alerts(snap, NOW, limits=Limits(restart_budget=2))) == {"RestartBudgetExhausted"}


def test_alert_shape_matches_prometheus_api() -> None:
    snap = healthy()
    snap.excluded_nodes = ["n1", "n2"]
    [alert] = firing_alerts(snap, NOW)
    assert alert["labels"] == {"alertname": "NodeExcluded", "severity": "warning", "run": "r"}
    assert alert["state"] == "firing" and alert["value"] == "2.0"
    assert alert["annotations"]["summary"].startswith("Run r: ")
    assert "{{" not in alert["annotations"]["summary"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", alert["activeAt"])
    assert datetime.fromisoformat(alert["activeAt"]).timestamp() == NOW


def test_nan_value_spelled_like_prometheus() -> None:
    snap = healthy()
    snap.loss = math.inf
    assert firing_alerts(snap, NOW)[0]["value"] == "+Inf"


def test_tracker_honours_for_and_keeps_active_at() -> None:
    tracker = AlertTracker()
    snap = healthy()
    snap.heartbeat_age_max_s = 100.0  # TrainingStalled has for: 1m
    [pending] = tracker.evaluate(snap, NOW)
    assert pending["state"] == "pending" and firing_alerts(snap, NOW, tracker) == []
    [firing] = tracker.firing(snap, NOW + 60)
    assert firing["state"] == "firing" and firing["activeAt"] == pending["activeAt"]
    snap.heartbeat_age_max_s = 0.1
    assert tracker.evaluate(snap, NOW + 61) == []
    snap.heartbeat_age_max_s = 100.0
    assert tracker.evaluate(snap, NOW + 62)[0]["state"] == "pending"  # the clock restarted


def test_tracker_zero_for_fires_at_once() -> None:
    tracker = AlertTracker()
    snap = healthy()
    snap.excluded_nodes = ["n"]
    assert names(tracker.firing(snap, NOW)) == {"NodeExcluded"}


def test_each_replay_verdict_raises_its_own_alert() -> None:
    """A one-off NaN replays clean (transient_fault: TransientFault, not the critical NaNLoss); a batch
    or the model bad when replayed too is a LossSpike; a NaN skipped unreplayed stays NaNLoss."""
    expect = {"transient_fault": {"TransientFault"}, "bad_data": {"LossSpike"}, "dynamics": {"LossSpike"},
              "divergence": {"LossSpike"}, "loss_spike": {"LossSpike"}, "nan": {"NaNLoss"}, "sdc": set()}
    for kind, alerts in expect.items():
        snap = healthy()
        snap.faults = [fault(kind, "x", 30)]
        assert names(firing_alerts(snap, NOW)) == alerts, kind
