"""Replay verdicts on the local cluster (2 nodes x 2 ranks + spares), each reached from its chaos fault.

One data-parallel run carries all four faults, in order: a one-shot NaN (transient), a bad batch (data),
the model's output layer going bad (dynamics, then the rollback), a faulty GPU on node1 (hardware). A
hybrid dp2 x tp2 run then carries a bad batch and a faulty GPU, on the lemon-node store the first run
filled: node1 is kept out from the start, and the faulty GPU lands on node2 instead.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from health.detectors.lemon import LemonNodeStore
from tests.conftest import RunResult, run_submit

TOL = 0.15  # held-out loss, absolute: the faults skip batches and redo a few steps
STEPS = 40
SPIKE = {"window": 10, "k": 4.0, "warmup_steps": 10}
DP_CHAOS = [{"fault": "nan", "step": 14, "rank": 1}, {"fault": "bad_batch", "step": 22},
            {"fault": "diverge", "step": 26}, {"fault": "sdc", "node": 1, "step": 34}]
HYBRID = {"dp_mode": "fsdp", "tp": 2, "sp": True}


def overrides(tmp: Path, db: Path, **extra: Any) -> dict[str, Any]:
    return {"train": {"steps": STEPS}, "policy": {"spike": SPIKE},  # replay: on by default
            "health": {"lemon_nodes": True, "lemon_db": str(db)}, **extra}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunResult]:
    tmp = tmp_path_factory.mktemp("replay")
    db = tmp / "nodes.db"
    out = {"clean": run_submit(tmp, overrides(tmp, tmp / "clean.db"), "clean"),
           "dp": run_submit(tmp, overrides(tmp, db, chaos=DP_CHAOS), "dp")}
    out["lemons"] = LemonNodeStore(db).nodes_to_exclude(1e12)  # type: ignore[assignment]
    return out


def by_step(r: RunResult) -> dict[int, dict[str, Any]]:
    """step → the first fault with a verdict there (dynamics recurs at its step until the rollback)."""
    out: dict[int, dict[str, Any]] = {}
    for f in r.status["faults"]:
        if f.get("verdict"):
            out.setdefault(int(f["step"]), f)
    return out


def applied_after(r: RunResult, step: int) -> dict[int, list[str]]:
    """attempt → nodes, for every attempt that applied an update at or after ``step``."""
    import json
    nodes = {int(e["attempt"]): e["nodes"] for e in r.events("launch")}
    out: dict[int, list[str]] = {}
    for line in (r.run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["step"] >= step and not row["skipped"]:
            out[int(row["attempt"])] = nodes[int(row["attempt"])]
    return out


def test_each_verdict_from_its_chaos_fault(runs: dict[str, RunResult]) -> None:
    r = runs["dp"]
    assert r.code == 0, r.status["reason"]
    f = by_step(r)
    assert [(s, f[s]["kind"], f[s]["verdict"], f[s]["action"]) for s in sorted(f)] == [
        (14, "transient_fault", "transient", "apply_clean"), (22, "bad_data", "data", "skip_step"),
        (26, "dynamics", "dynamics", "alert"), (34, "sdc", "hardware", "exclude_node")], r.status["faults"]
    assert f[14]["node"] == "node0"  # the NaN came from rank 1, on node0: counted against it
    for s in f:
        assert f[s]["injected_t"] is not None and f[s]["detected_t"] >= f[s]["injected_t"]  # ground truth
    replays = {e["step"]: e for e in r.events("replay")}
    assert replays[22]["samples"] and replays[22]["neighbours_bad"] == [False, False]
    assert r.status["actions"].get("rollback") == 1  # dynamics persisted: the rollback policy acted


def test_hardware_excludes_exactly_the_node_and_applies_nothing_it_computed(runs: dict[str, RunResult]) -> None:
    r = runs["dp"]
    assert r.status["excluded_nodes"] == ["node1"]
    assert r.events("launch")[-1]["nodes"] == ["node0", "node2"]  # a spare took its place
    assert all("node1" not in nodes for nodes in applied_after(r, 34).values())
    assert runs["lemons"] == ["node1"]  # kept out of later runs until a burn-in passes


def test_final_loss_close_to_clean_and_replay_in_the_ledger(runs: dict[str, RunResult]) -> None:
    r, clean = runs["dp"], runs["clean"]
    assert clean.code == 0 and sorted(r.losses()) == list(range(STEPS))
    assert abs(r.final_eval - clean.final_eval) < TOL, (r.final_eval, clean.final_eval)
    spent = sum(e["replay_s"] for e in r.events("replay"))
    assert 0 < r.status["lost"]["replay"] <= spent + 1e-3, (r.status["lost"], spent)  # the journal rounds to 0.1 ms


@pytest.mark.slow
def test_hybrid_layout_on_the_lemon_store(tmp_path: Path, runs: dict[str, RunResult]) -> None:
    db = Path(runs["dp"].run_dir).parent / "nodes.db"
    chaos = [{"fault": "bad_batch", "step": 22}, {"fault": "sdc", "node": 1, "step": 30}]
    r = run_submit(tmp_path, overrides(tmp_path, db, chaos=chaos, parallel=HYBRID,
                                       cluster={"spare_nodes": 2}), "hybrid")
    assert r.code == 0, r.status["reason"]
    first = r.events("launch")[0]["nodes"]
    assert first == ["node0", "node2"]  # node1 is a lemon from the first run
    f = by_step(r)
    assert (f[22]["verdict"], f[30]["verdict"], f[30]["node"]) == ("data", "hardware", "node2"), r.status["faults"]
    assert r.status["excluded_nodes"] == ["node1", "node2"]
    assert all("node2" not in nodes for nodes in applied_after(r, 30).values())
    assert sorted(r.losses()) == list(range(STEPS))


def test_gradient_only_corruption_is_hardware_on_its_node(tmp_path: Path) -> None:
    """node1's GPU spoils only the weight gradients it computes (the loss stays right): the cross check
    compares local gradient fingerprints too, so the verdict is hardware on node1, not bad data."""
    chaos = [{"fault": "sdc", "node": 1, "step": 14, "target": "grad"}]
    r = run_submit(tmp_path, {"train": {"steps": 24}, "policy": {"spike": SPIKE}, "chaos": chaos}, "grad")
    assert r.code == 0, r.status["reason"]
    f = by_step(r)
    assert [(s, f[s]["kind"], f[s]["verdict"], f[s]["node"]) for s in f] == [(14, "sdc", "hardware", "node1")]
    [replay] = r.events("replay")
    assert "gradient norm²" in replay["reason"] and replay["suspect_nodes"] == ["node1"], replay
    assert all(math.isfinite(x) for x in replay["first"].values())  # every replica's loss was right
    assert r.status["excluded_nodes"] == ["node1"]
    assert all("node1" not in nodes for nodes in applied_after(r, 14).values())
    assert sorted(r.losses()) == list(range(24))


@pytest.mark.slow
def test_a_replica_spanning_nodes_blames_only_the_node_of_the_stage_that_diverged(tmp_path: Path) -> None:
    """dp2 x pp2, one rank per node: each replica spans two nodes (its two stages). node1 holds stage 1 of
    replica 0 and corrupts its output; the replay's stage prints show stage 0 agreeing and stage 1 not,
    so node1 alone is excluded (node0, the other half of its replica, stays) and a spare takes its place."""
    layout = {"pp": 2, "microbatches": 2, "pp_schedule": "1f1b", "dp_mode": "fsdp"}
    r = run_submit(tmp_path, {"train": {"steps": 24}, "policy": {"spike": SPIKE}, "parallel": layout,
                              "cluster": {"nodes": 4, "ranks_per_node": 1, "spare_nodes": 1},
                              "chaos": [{"fault": "sdc", "node": 1, "step": 14}]}, "pp")
    assert r.code == 0, r.status["reason"]
    assert r.events("launch")[0]["rank_map"] == {"0": "node0", "1": "node1", "2": "node2", "3": "node3"}
    f = by_step(r)
    assert [(s, f[s]["verdict"], f[s]["node"]) for s in f] == [(14, "hardware", "node1")], r.status["faults"]
    assert r.events("replay")[0]["suspect_nodes"] == ["node1"]
    assert r.status["excluded_nodes"] == ["node1"]
    assert all("node1" not in nodes for nodes in applied_after(r, 14).values())
    assert sorted(r.losses()) == list(range(24))
