"""Precision audit, the lemon-node store and the config's spike rule as the shared loss rule's parameters."""

from __future__ import annotations

from pathlib import Path

from health.detectors.lemon import LemonNodeStore
from health.detectors.loss_rules import SpikeParams, params_from_rule
from health.detectors.precision import audit_precision
from spec.config import SpikeRule

DAY = 86_400.0


def test_mixed_precision_master_and_optimizer_must_be_fp32() -> None:
    dtypes = {"model.w": "torch.float32", "model.b": "torch.bfloat16", "optim.state.w.exp_avg": "bf16",
              "optim.state.w.step": "torch.int64"}
    kinds = {(f.kind, f.tensor) for f in audit_precision(dtypes, "bf16", None)}
    assert kinds == {("low_precision_master", "model.b"),
                     ("low_precision_optimizer_state", "optim.state.w.exp_avg")}


def test_clean_and_changed_precision() -> None:
    ok = {"model.w": "float32", "optim.state.w.exp_avg_sq": "torch.float32"}
    assert audit_precision(ok, "bf16", "bf16") == []
    found = audit_precision(ok, "bf16", "fp32")
    assert [f.kind for f in found] == ["precision_changed"]
    assert [f.kind for f in audit_precision({"model.w": "float16"}, "fp32", None)] == ["unexpected_dtype"]


def test_lemon_threshold_hysteresis_and_burn_in(tmp_path: Path) -> None:
    db = LemonNodeStore(tmp_path / "nodes.db")
    t0 = 1_000_000.0
    db.record_fault("n1", "gpu_error", t0)
    db.record_probe("n1", "failed", t0 + 10)
    db.record_probe("n2", "degraded", t0 + 10)
    db.record_straggler("n1", 1.2, t0 + 15)  # below the strike score: history only
    assert db.nodes_to_exclude(t0 + 20) == []
    db.record_straggler("n1", 2.0, t0 + 30)
    assert db.nodes_to_exclude(t0 + 40) == ["n1"]
    assert db.nodes_to_exclude(t0 + 3 * DAY) == ["n1"]  # strikes aged out, still excluded
    # a second store on the same file (another run) sees the same decision
    assert LemonNodeStore(tmp_path / "nodes.db").nodes_to_exclude(t0 + 3 * DAY) == ["n1"]
    db.mark_burn_in_passed("n1", t0 + 3 * DAY + 1)
    assert db.nodes_to_exclude(t0 + 3 * DAY + 2) == []
    assert [e.category for e in db.history("n1")] == ["fault", "probe", "straggler", "straggler", "burn_in"]


def test_lemon_strikes_outside_window_do_not_count(tmp_path: Path) -> None:
    db = LemonNodeStore(tmp_path / "nodes.db")
    for i in range(3):
        db.record_fault("n3", "rank_crash", i * DAY)
    assert db.nodes_to_exclude(2 * DAY + 1) == []
    db.record_fault("n3", "rank_crash", 2 * DAY + 2)
    db.record_fault("n3", "rank_crash", 2 * DAY + 3)
    assert db.nodes_to_exclude(2 * DAY + 4) == ["n3"]


def test_the_config_spike_rule_is_the_rules_default() -> None:
    assert params_from_rule(SpikeRule()) == SpikeParams()
