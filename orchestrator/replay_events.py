"""The supervisor's side of a replayed step (trainer.replay): journal the evidence, record the fault with
its verdict, act.

- ``data``: fault ``bad_data``, action skip_step; the batch's samples are in the journal's replay line.
- ``transient``: fault ``transient_fault``, action apply_clean; the event counts against the node (and
  names the rank, when one rank's result changed) in the lemon-node store (repeated ones make it a lemon);
  none when every replica's first result was bad (a corrupted read, not a node).
- ``dynamics``: fault ``dynamics``, action alert; the trainer's rollback policy acts if it persists.
- ``hardware``: fault ``sdc`` on the one node the replay blamed: it goes through recovery like any
  node-bound fault (fence, exclude, relaunch on a spare from the last checkpoint) and is recorded in the
  lemon-node store as excluded until a burn-in probe passes. A replay that blames several nodes (a
  replica spanning nodes) excludes them all: a faulty GPU left in the job is worse than a spare used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.triage import Candidate
from spec.faults import VERDICT_KIND, spec

if TYPE_CHECKING:
    from orchestrator.run_host import RunHost as Supervisor  # the protocol the supervisor meets


def _node_names(sup: Supervisor, indices: list[int]) -> list[str]:
    nodes = sup.watch.spec.nodes if sup.watch is not None else []
    return [nodes[i] for i in indices if 0 <= i < len(nodes)]


def on_replay(sup: Supervisor, msg: dict[str, Any], now: float) -> None:
    verdict = str(msg.get("verdict"))
    step = int(msg["step"])
    suspects = _node_names(sup, [int(i) for i in msg.get("suspect_node_indices") or []])
    secs = float(msg.get("replay_s") or 0.0)
    sup.journal.append("replay", step=step, verdict=verdict, reason=msg.get("reason"), rule=msg.get("rule"),
                       samples=msg.get("samples"), suspect_nodes=suspects, replay_s=secs,
                       first=msg.get("first"), same=msg.get("same"), same_grad=msg.get("same_grad"),
                       cross=msg.get("cross"), suspect_ranks=msg.get("suspect_ranks"),
                       neighbours_bad=msg.get("neighbours_bad"), replica_nodes=msg.get("replica_nodes"),
                       used=msg.get("used"))
    kind = VERDICT_KIND.get(verdict, "loss_spike")
    node = suspects[0] if len(suspects) == 1 else None
    evidence = {"detail": str(msg.get("reason", "")), "verdict": verdict, "rule": msg.get("rule"),
                "replay_s": secs, "samples": msg.get("samples"), "suspect_nodes": suspects}
    ranks = [int(r) for r in msg.get("suspect_ranks") or []]
    c = Candidate(kind, float(msg.get("t_start") or msg["t"]), ranks[0] if len(ranks) == 1 else None, node,
                  evidence)
    if verdict == "hardware":
        _hardware(sup, c, suspects, secs, now)
        return
    f = sup.record_fault(c, now, spec(kind).action.value, step=step)
    if verdict == "data":
        sup.snap.batches_skipped += 1
    if verdict == "transient" and node is not None and sup.lemons is not None:
        sup.lemons.record_fault(node, kind, now)
    if f.node is None and len(suspects) > 1:
        f.detail = (f.detail + f"; nodes {', '.join(suspects)}")[:300]


def _hardware(sup: Supervisor, c: Candidate, suspects: list[str], secs: float, now: float) -> None:
    """Hand the node to recovery (exclude + relaunch); the replay's seconds are the ledger's replay time,
    taken out of the detection time recovery will charge (injection → verdict includes the replay)."""
    sup.meter.lost.replay += secs
    sup.meter.lost.detection -= secs
    for extra in suspects[1:]:
        sup.exclude(extra, "replay: the bad step reproduced only on the nodes of one replica", c.evidence)
    if c.node is None and suspects:
        c.node = suspects[0]
    if sup.lemons is not None:
        for node in suspects:
            sup.lemons.record_hardware(node, c.kind, now, str(c.evidence.get("detail", ""))[:200])
    assert sup.watch is not None
    sup.watch.add_candidate(c, now)
