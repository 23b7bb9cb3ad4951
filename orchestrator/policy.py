"""What to do about a fault: a pure function of the fault, the policy and the run's situation.

No I/O and no clock: the supervisor gathers the facts, ``decide`` returns the action, and the same
inputs always give the same answer, which is what makes the policy testable in isolation.
"""

from __future__ import annotations

from dataclasses import dataclass

from spec.config import PolicyConfig
from spec.faults import Action, spec


@dataclass(frozen=True)
class Situation:
    """The facts the policy needs, gathered by the supervisor."""

    restarts_used: int
    spares_left: int
    nodes_needed: int
    nodes_healthy: int
    crashes_on_node: int = 0  # earlier crashes on the fault's node in this run


@dataclass(frozen=True)
class Decision:
    action: str  # skip_step | rollback | alert | relaunch | exclude_node | abort
    exclude_node: bool
    relaunch: bool
    reason: str


def decide(kind: str, node: str | None, policy: PolicyConfig, s: Situation) -> Decision:
    """Map a fault to an action (its default from the fault vocabulary), honouring the restart budget
    and the nodes left."""
    fs = spec(kind)
    if fs.in_step:
        return Decision(fs.action.value, False, False, "handled inside the training step")
    if fs.action is Action.ABORT:
        return Decision("abort", False, False, f"{kind} will recur on relaunch: {fs.advice}")
    if kind == "straggler" and policy.straggler_action == "alert":
        return Decision("alert", False, False, "straggler_action is 'alert'")
    if fs.action is Action.ALERT and kind != "straggler":
        return Decision("alert", False, False, fs.advice)
    exclude = node is not None and (
        fs.node_bound
        or (kind == "rank_crash" and (policy.exclude_on_crash or s.crashes_on_node >= 2)))
    if s.restarts_used >= policy.restart_budget:
        return Decision("abort", exclude, False,
                        f"restart budget exhausted ({s.restarts_used}/{policy.restart_budget}) on {kind}"
                        + (f" at {node}" if node else ""))
    healthy_after = s.nodes_healthy - (1 if exclude else 0)
    if healthy_after + s.spares_left < s.nodes_needed and not policy.shrink_on_node_loss:
        return Decision("abort", exclude, False,
                        f"{kind} on {node}: {healthy_after} healthy nodes and {s.spares_left} spares left, "
                        f"{s.nodes_needed} needed (set policy.shrink_on_node_loss to continue smaller)")
    return Decision("exclude_node" if exclude else "relaunch", exclude, True,
                    f"{kind}" + (f" on {node}" if node else ""))
