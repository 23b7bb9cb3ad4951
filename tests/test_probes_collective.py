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


def test_probe_ranks_placed_by_node_agents_meet_through_the_shared_directory(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Slurm's in-allocation path: each node agent forks and execs its probe ranks (ProbeWorkers) and
    writes their exit codes; the ranks meet through a FileStore, so nobody chose an address or port.
    A rank its agent could not be asked to start fails that node, and nothing waits for it."""
    import os
    import threading

    from health.probes.collective import run_placed_collective_probe
    from orchestrator.launcher.probe_workers import ProbeWorkers

    agent = ProbeWorkers()  # one for both "nodes": the same reaping as a node agent's

    def reap_until_done() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (agent.running or not started):
            for pid in list(agent.running):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    agent.reaped(pid, os.waitstatus_to_exitcode(status))
            time.sleep(0.02)

    started: list[int] = []

    def start(rank: int, node: str, env: dict[str, str]) -> bool:
        agent.start({"env": env, "deadline_s": 90})
        started.append(rank)
        return True

    reaper = threading.Thread(target=reap_until_done, daemon=True)
    reaper.start()
    results = run_placed_collective_probe(["nodeA", "nodeA", "nodeB", "nodeB"], tmp_path / "p1", 40.0, start)
    reaper.join(timeout=60)
    # a report came back (the ranks met and measured); "degraded" is the analysis reading load as a slow
    # rank on this 2-core machine, which is not what this test is about
    assert [r.verdict in ("ok", "degraded") and "allreduce_ms" in r.evidence for r in results] == [True, True], \
        [(r.verdict, r.evidence) for r in results]
    assert (tmp_path / "p1" / "rank3.exit").read_text() == "0"

    refused = run_placed_collective_probe(["nodeA", "nodeB"], tmp_path / "p2", 10.0,
                                          lambda rank, node, env: False, startup_s=5.0)
    assert {r.node: r.verdict for r in refused} == {"nodeA": "failed", "nodeB": "failed"}
