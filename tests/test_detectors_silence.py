"""silent_nodes: a node whose every rank went quiet while other nodes are heard (dead or partitioned)."""

from __future__ import annotations

from health.detectors.silence import silent_nodes

RANK_NODE = {0: "node0", 1: "node0", 2: "node1", 3: "node1"}


def test_node_with_every_rank_quiet_is_silent() -> None:
    last = {0: 99.5, 1: 99.8, 2: 90.0, 3: 91.0}
    assert silent_nodes(last, RANK_NODE, set(), 100.0, 2.0) == ["node1"]


def test_one_quiet_rank_is_not_a_silent_node() -> None:
    last = {0: 99.5, 1: 99.8, 2: 90.0, 3: 99.9}
    assert silent_nodes(last, RANK_NODE, set(), 100.0, 2.0) == []


def test_everyone_quiet_names_no_node() -> None:
    """No node is heard: the supervisor's own network (or the whole job) is the problem, not one node."""
    last = {0: 90.0, 1: 90.0, 2: 90.0, 3: 90.0}
    assert silent_nodes(last, RANK_NODE, set(), 100.0, 2.0) == []


def test_ranks_that_exited_cleanly_do_not_count() -> None:
    last = {0: 99.5, 1: 99.8, 2: 90.0, 3: 90.0}
    assert silent_nodes(last, RANK_NODE, {2, 3}, 100.0, 2.0) == []
