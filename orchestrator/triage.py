"""Root-cause triage: when one thing breaks, many ranks fail after it; name the first cause.

A node failure makes the peers of its ranks fail with connection errors a few milliseconds later, and
those often reach the supervisor first. The supervisor collects everything during a short settle window
and keeps the candidate with the highest priority: a vanished node, then a rank that failed on its own,
then a hang, and only last a rank that merely lost its peers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PEER_PATTERNS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                 "Connection refused", "connectFullMesh failed")
PRIORITY = {"node_failure": 0, "gpu_error": 1, "io_error": 1, "lustre_error": 1, "oom": 1, "disk_full": 1,
            "collective_timeout": 2, "nccl_error": 2, "rank_crash": 3, "hang": 4, "silent": 4,
            "straggler": 5, "peer_lost": 9}


@dataclass
class Candidate:
    kind: str
    t_fault: float
    rank: int | None = None
    node: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    action_hint: str | None = None


def is_peer_failure(stderr_tail: str, signal: int | None) -> bool:
    """A rank killed by our own stop, or one whose last words are a lost connection to a peer."""
    if signal in (15,):
        return True
    return any(p.lower() in stderr_tail.lower() for p in PEER_PATTERNS)


def root_cause(cands: list[Candidate]) -> Candidate:
    return min(cands, key=lambda c: (PRIORITY.get(c.kind, 3), c.t_fault))
