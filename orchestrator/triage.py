"""Root-cause triage: when one thing breaks, many ranks fail after it; name the first cause.

A node failure makes the peers of its ranks fail with connection errors a few milliseconds later, and
those often reach the supervisor first. The supervisor collects everything during a short settle window
and keeps the candidate with the highest priority: a vanished node, then a rank that failed on its own,
then a hang, and only last a rank that merely lost its peers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spec.faults import spec

PEER_PATTERNS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                 "Connection refused", "connectFullMesh failed")


@dataclass
class Candidate:
    kind: str
    t_fault: float
    rank: int | None = None
    node: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


def is_peer_failure(stderr_tail: str, signal: int | None) -> bool:
    """A rank killed by our own stop, or one whose last words are a lost connection to a peer."""
    if signal in (15,):
        return True
    return any(p.lower() in stderr_tail.lower() for p in PEER_PATTERNS)


def root_cause(cands: list[Candidate]) -> Candidate:
    """The candidate with the highest priority in the fault vocabulary; the earliest among equals."""
    return min(cands, key=lambda c: (spec(c.kind).priority, c.t_fault))
