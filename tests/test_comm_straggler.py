"""A communication straggler on the namespaced local cluster: one node's link rate-limited (tc tbf) slows
every rank equally, so per-rank step times cannot name it; the supervisor sees all ranks slower while
compute is not, runs the pairwise probe in the background (with the idle spare as a third node) and
names the slow link's node. Also the probe's link analysis on recorded pair times (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from health.probes.collective import analyse, link_scores
from orchestrator import netns
from tests.conftest import run_submit

needs_netns = pytest.mark.skipif(netns.unavailable_reason() is not None,
                                 reason=f"namespaced nodes need root and iproute2: {netns.unavailable_reason()}")


def test_link_scores_name_the_node_at_the_slow_end() -> None:
    # 3 nodes x 1 rank, hypercube pairs: 0-1 (n0-n1), 0-2 (n0-n2); n1's link is slow
    gathered = [("n0", 0.01, {1: 0.40, 2: 0.010}), ("n1", 0.01, {0: 0.40}), ("n2", 0.01, {0: 0.011})]
    assert link_scores(gathered)["n1"] > 10
    rep = analyse(gathered, 1 << 18, slow_threshold=2.0)
    assert rep.slow_link_nodes == ["n1"]
    assert link_scores(gathered[:2]) == {}  # two nodes: both ends of one link look the same


@needs_netns
def test_slow_link_is_named_by_the_background_probe(tmp_path: Path) -> None:
    r = run_submit(tmp_path, {"cluster": {"ranks_per_node": 1},
                              "train": {"steps": 90, "global_batch": 4, "step_sleep_s": 0.1},
                              "checkpoint": {"every_steps": 80},
                              "health": {"probes": ["node", "collective"], "preflight": False, "hang_timeout_s": 20.0},
                              "chaos": [{"fault": "slow_link", "step": 15, "node": 1, "steps": 70,
                                         "rate_kbit": 2000}]})
    assert r.code == 0, r.status.get("reason")
    assert r.events("comm_slowdown"), [e["event"] for e in r.journal]
    verdicts = r.events("link_probe")
    assert verdicts and verdicts[0]["slow_nodes"] == ["node1"], verdicts
    found = [f for f in r.status["faults"] if f["kind"] == "slow_link"]
    assert found and found[0]["node"] == "node1" and found[0]["action"] == "alert", r.status["faults"]
    assert r.status["excluded_nodes"] == []  # an alert: the run goes on


@needs_netns
def test_preflight_collective_probe_runs_across_the_bridge(tmp_path: Path) -> None:
    """The pre-flight collective probe places each node's ranks in its namespace (not on one loopback)."""
    r = run_submit(tmp_path, {"cluster": {"ranks_per_node": 1}, "train": {"steps": 6, "global_batch": 4},
                              "checkpoint": {"every_steps": 5},
                              "health": {"probes": ["node", "collective"], "preflight": True}})
    assert r.code == 0, r.status.get("reason")
    coll = [x for x in r.events("preflight")[0]["results"] if x["probe"] == "collective"]
    assert sorted(x["node"] for x in coll) == ["node0", "node1"] and all(x["verdict"] == "ok" for x in coll), coll


def test_preflight_uses_the_launchers_placement(tmp_path: Path) -> None:
    from health.probes.result import ProbeResult
    from spec.config import RunConfig
    from orchestrator.journal import Journal
    from orchestrator.preflight import make_preflight
    cfg = RunConfig.model_validate({"health": {"probes": ["collective"]}})
    seen: list[list[str]] = []

    def placed(nodes: list[str]) -> list[ProbeResult]:
        seen.append(nodes)
        return [ProbeResult("collective", n, "failed" if n == "node1" else "ok", {}) for n in nodes]

    pre = make_preflight(cfg, tmp_path, Journal(tmp_path / "journal.jsonl"), placed)
    assert pre(["node0", "node1"]) == ["node1"] and seen == [["node0", "node1"]]
