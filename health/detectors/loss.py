"""NaN/Inf and loss-spike detection for the supervisor, on the global loss stream of a run.

The rule itself lives in :mod:`health.detectors.loss_rules` and is shared with the trainer's in-step
guard; this module only keeps the state the rule needs (recent good losses, the run of consecutive bad
steps) so the supervisor sees exactly the steps the trainer skipped, and can tell when skipping stopped
helping (``consecutive >= policy.max_consecutive_bad`` calls for a rollback).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from health.detectors.loss_rules import SpikeParams, judge_step

if TYPE_CHECKING:
    from spec.config import SpikeRule


@dataclass(frozen=True)
class LossFinding:
    step: int
    kind: str  # "nan" | "loss_spike": the journal's fault kinds
    rule: str  # loss_rules' rule name: nonfinite_loss | nonfinite_grad | spike
    detail: str
    consecutive: int  # bad steps in a row, this one included


def params_from_rule(rule: SpikeRule) -> SpikeParams:
    """run.yaml's ``policy.spike`` as the shared rule's parameters."""
    return SpikeParams(window=rule.window, k=rule.k, warmup_steps=rule.warmup_steps,
                       min_rel_increase=rule.min_rel_increase)


class LossSpikeDetector:
    """Feed it each step's global loss and gradient norm; it returns a finding for each bad step."""

    def __init__(self, params: SpikeParams | None = None) -> None:
        self.params = params or SpikeParams()
        self._good: deque[float] = deque(maxlen=max(self.params.window, self.params.warmup_steps, 4))
        self._consecutive = 0

    def observe(self, step: int, loss: float, grad_norm: float | None) -> LossFinding | None:
        verdict = judge_step(loss, grad_norm, list(self._good), self.params)  # rule slices
        if not verdict.bad:
            self._good.append(float(loss))
            self._consecutive = 0
            return None
        self._consecutive += 1
        kind = "loss_spike" if verdict.rule == "spike" else "nan"
        return LossFinding(step, kind, verdict.rule, verdict.detail, self._consecutive)

    def reset(self, keep_history: bool = True) -> None:
        """After a rollback the good history still describes the model we rolled back to; after a
        config change it may not, so the caller chooses."""
        self._consecutive = 0
        if not keep_history:
            self._good.clear()
