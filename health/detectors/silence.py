"""Silent nodes: every rank of a node unheard while ranks elsewhere are still heard.

Heartbeats come from a thread of their own, so a rank blocked in a collective keeps sending them; a node
whose every rank stops at once is dead, frozen or cut off the network (a partition). Pure: the supervisor
passes the last receive time of each rank and its clock.
"""

from __future__ import annotations

from collections.abc import Mapping


def silent_nodes(last_hb: Mapping[int, float], rank_node: Mapping[int, str], exited: set[int], now: float,
                 quiet_s: float) -> list[str]:
    """Nodes whose every known, not-yet-exited rank has been unheard for more than ``quiet_s`` while at
    least one rank on another node was heard within ``quiet_s``; sorted, empty when none (or all)."""
    by_node: dict[str, list[float]] = {}
    for rank, t in last_hb.items():
        node = rank_node.get(rank)
        if node is not None and rank not in exited:
            by_node.setdefault(node, []).append(now - t)
    silent = sorted(n for n, ages in by_node.items() if min(ages) > quiet_s)
    heard = [n for n, ages in by_node.items() if min(ages) <= quiet_s]
    return silent if heard else []
