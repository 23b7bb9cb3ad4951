"""Collective probe with real gloo processes (4 ranks, 2 'nodes'): healthy, one slow rank named with
its node, a dead rank, and a hung rank killed at the deadline. Plus the pure analysis."""

from __future__ import annotations

import time

from health.probes.collective import analyse, run_collective_probe

NODES = {0: "nodeA", 1: "nodeA", 2: "nodeB", 3: "nodeB"}


def test_analysis_names_the_rank_slow_with_every_partner() -> None:
    ms = 1e-3
    gathered = [("a", 5 * ms, {1: 1 * ms, 2: 9 * ms}), ("a", 5 * ms, {0: 1 * ms, 3: 1.1 * ms}),
                ("b", 5 * ms, {3: 9 * ms, 0: 9 * ms}), ("b", 5 * ms, {2: 9 * ms, 1: 1.1 * ms})]
    rep = analyse(gathered, 1 << 20, slow_threshold=2.0)
    assert rep.slow_ranks == [2] and rep.busbw_gbps > 0


def test_slow_rank_found_by_name() -> None:
    results = run_collective_probe(4, NODES, timeout_s=40, slow_rank=3, slow_factor=4.0)
    by = {r.node: r for r in results}
    assert by["nodeA"].verdict == "ok"
    assert (by["nodeB"].verdict, by["nodeB"].fault_kind) == ("degraded", "straggler")
    assert by["nodeB"].evidence["slow_ranks"] == [3]
    assert by["nodeA"].evidence["allreduce_ms"] > 0 and by["nodeA"].evidence["busbw_gbps"] > 0


def test_dead_rank_named_and_nothing_hangs() -> None:
    t0 = time.monotonic()
    results = run_collective_probe(4, NODES, timeout_s=40, dead_rank=1)
    assert time.monotonic() - t0 < 20
    by = {r.node: r for r in results}
    assert (by["nodeA"].verdict, by["nodeA"].fault_kind) == ("failed", "rank_crash")
    assert by["nodeA"].evidence["failing_ranks"] == [1]
    assert by["nodeB"].verdict == "skipped"


def test_hung_rank_killed_at_deadline_and_named() -> None:
    t0 = time.monotonic()
    results = run_collective_probe(2, {0: "nodeA", 1: "nodeB"}, timeout_s=6, hang_rank=1)
    # the 6 s start once both ranks joined; start-up (torch import under load) has its own budget, so
    # this bound only proves the hang did not wait for gloo's 30-minute default
    assert time.monotonic() - t0 < 120
    by = {r.node: r for r in results}
    assert (by["nodeB"].verdict, by["nodeB"].fault_kind) == ("failed", "collective_timeout")
    assert by["nodeB"].evidence["phase"] == {"1": "joined"}
    assert by["nodeA"].verdict == "skipped"
