"""Chaos in hybrid layouts on the local cluster: a crash and a NaN in dp2×tp2 and tp2×pp2, and a node
loss with no spare that reshards dp2×tp2 → dp1×tp2 from the checkpoint (policy.shrink_on_node_loss)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_submit

CHAOS = [{"fault": "nan", "step": 12, "rank": 1}, {"fault": "rank_crash", "step": 25, "rank": 2}]
LAYOUTS = {"dp2_tp2": {"dp_mode": "fsdp", "tp": 2, "sp": True},
           "tp2_pp2": {"tp": 2, "pp": 2, "microbatches": 2, "pp_schedule": "1f1b", "dp_mode": "fsdp"}}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_chaos_in_hybrid_layout(tmp_path: Path, name: str) -> None:
    base = {"parallel": LAYOUTS[name], "train": {"steps": 40}}
    clean = run_submit(tmp_path, base, "clean")
    r = run_submit(tmp_path, {**base, "chaos": CHAOS}, "chaos")
    assert clean.code == 0 and r.code == 0, r.status["reason"]
    kinds = [(f["kind"], f["action"]) for f in r.status["faults"]]
    # the one-off NaN replays clean (policy.replay, on by default): applied, counted against its node
    assert ("transient_fault", "apply_clean") in kinds and ("rank_crash", "relaunch") in kinds, kinds
    nan = next(f for f in r.status["faults"] if f["kind"] == "transient_fault")
    assert (nan["step"], nan["verdict"], nan["rank"], nan["node"]) == (12, "transient", 1, "node0"), nan
    assert abs(r.final_eval - clean.final_eval) < 0.08
    assert sorted(r.losses()) == list(range(40))


@pytest.mark.slow
def test_node_loss_reshards_to_smaller_dp(tmp_path: Path) -> None:
    base = {"parallel": LAYOUTS["dp2_tp2"], "train": {"steps": 40}, "cluster": {"spare_nodes": 0},
            "policy": {"shrink_on_node_loss": True}}
    clean = run_submit(tmp_path, base, "clean")
    r = run_submit(tmp_path, {**base, "chaos": [{"fault": "node_failure", "step": 25, "node": 1}]}, "shrunk")
    assert r.code == 0, r.status["reason"]
    assert r.events("shrink")[0]["world"] == 2
    assert abs(r.final_eval - clean.final_eval) < 0.08
    c, s = clean.losses(), r.losses()
    for step in range(20, 25):  # redone after the reshard from the step-20 checkpoint: same trajectory
        assert abs(c[step] - s[step]) < 1e-3, (step, c[step], s[step])
