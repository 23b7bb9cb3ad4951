"""Chaos in hybrid layouts on the local cluster: a crash and a NaN in dp2×tp2 and tp2×pp2, and a node
loss with no spare that reshards dp2×tp2 → dp1×tp2 (policy.shrink_on_node_loss): from storage under FSDP,
from the memory tier under DDP.

The fault-free reference is one plain data-parallel run of the same steps, made once per session and
shared by the three tests (``shared_run``): every hybrid layout reproduces the single-process losses
(tests/test_parallel_equivalence.py, to 1e-4; dp2×tp2, tp2×pp2 and plain DDP agreed here to 1e-6 at every
step), so a layout's own clean run is the same trajectory at several times the cost per step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunResult, run_submit, shared_run

STEPS = 30  # checkpoints at 0, 10, 20, 30: every fault below resumes from step 20 and redoes steps after it
CHAOS = [{"fault": "nan", "step": 12, "rank": 1}, {"fault": "rank_crash", "step": 25, "rank": 2}]
LAYOUTS = {"dp2_tp2": {"dp_mode": "fsdp", "tp": 2, "sp": True},
           "tp2_pp2": {"tp": 2, "pp": 2, "microbatches": 2, "pp_schedule": "1f1b", "dp_mode": "fsdp"}}


def base(name: str) -> dict[str, Any]:
    return {"parallel": LAYOUTS[name], "train": {"steps": STEPS}}


def clean_of(factory: pytest.TempPathFactory) -> RunResult:
    clean = shared_run(factory, f"clean-{STEPS}-steps", {"train": {"steps": STEPS}, "cluster": {"spare_nodes": 0}})
    assert clean.code == 0, clean.status["reason"]
    return clean


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_chaos_in_hybrid_layout(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, name: str) -> None:
    clean = clean_of(tmp_path_factory)
    r = run_submit(tmp_path, {**base(name), "chaos": CHAOS}, "chaos")
    assert r.code == 0, r.status["reason"]
    kinds = [(f["kind"], f["action"]) for f in r.status["faults"]]
    # the one-off NaN replays clean (policy.replay, on by default): applied, counted against its node
    assert ("transient_fault", "apply_clean") in kinds and ("rank_crash", "relaunch") in kinds, kinds
    nan = next(f for f in r.status["faults"] if f["kind"] == "transient_fault")
    assert (nan["step"], nan["verdict"], nan["rank"], nan["node"]) == (12, "transient", 1, "node0"), nan
    assert abs(r.final_eval - clean.final_eval) < 0.08
    assert sorted(r.losses()) == list(range(STEPS))
    c, s = clean.losses(), r.losses()
    for step in range(20, STEPS):  # redone from the step-20 checkpoint after the crash: the clean trajectory
        assert abs(c[step] - s[step]) < 1e-3, (step, c[step], s[step])


@pytest.mark.slow
@pytest.mark.parametrize("dp_mode,tier", [("fsdp", "storage"), ("ddp", "memory")])
def test_node_loss_reshards_to_smaller_dp(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                                          dp_mode: str, tier: str) -> None:
    """dp2 x tp2 loses a node with no spare and goes on at dp1 x tp2, memory tier on. FSDP shards the state
    over dp, so no surviving rank's copy holds a new rank's shard: storage (step 20). DDP over tp keeps
    each tp shard whole on every dp replica: the surviving node's copies reshard from memory (step 24-25)."""
    clean = clean_of(tmp_path_factory)
    r = run_submit(tmp_path, {**base("dp2_tp2"), "parallel": {**LAYOUTS["dp2_tp2"], "dp_mode": dp_mode},
                              "cluster": {"spare_nodes": 0}, "checkpoint": {"memory": {"enabled": True}},
                              "policy": {"shrink_on_node_loss": True},
                              "chaos": [{"fault": "node_failure", "step": 25, "node": 1}]}, "shrunk")
    assert r.code == 0, r.status["reason"]
    assert r.events("shrink")[0]["world"] == 2
    load = next(e for e in r.events("checkpoint_loaded") if e["seq"] > r.events("shrink")[0]["seq"])
    assert load["tier"] == tier and (load["step"] == 20 if tier == "storage" else 24 <= load["step"] <= 25), load
    if tier == "memory":
        assert load["from_world"] == 4
    assert abs(r.final_eval - clean.final_eval) < 0.08
    c, s = clean.losses(), r.losses()
    for step in range(load["step"], STEPS):  # redone after the reshard: the same trajectory
        assert abs(c[step] - s[step]) < 1e-3, (step, c[step], s[step])
