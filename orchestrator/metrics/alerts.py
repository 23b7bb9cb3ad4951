"""Alert rules, defined once: each has a PromQL expression AND a Python evaluator of the same condition.

Why both: Prometheus evaluates ``orchestrator/alerts.yml`` (generated from :data:`RULES`) when the
operator runs one, while ``orchestrator status`` and the ``/alerts`` endpoint must answer without a
Prometheus. Keeping the threshold constants, the expression and the evaluator side by side in one
:class:`AlertRule` is what keeps them from drifting; ``tests/promtool`` checks the PromQL side and the
unit tests the Python side.

Windowed rules (``increase(...[w])``) are evaluated in Python from the snapshot's fault records:
a fault of kind K with ``t`` in the window counts as an increase of ``faults_total{kind="K"}``, and a
fault whose ``action`` is ``relaunch`` as one of ``actions_total{action="relaunch"}``.

Regenerate the shipped file with ``python -m orchestrator.metrics.alerts > orchestrator/alerts.yml``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from orchestrator.metrics.exporter import checkpoint_age_s, restart_budget_of
from orchestrator.snapshot import RunSnapshot

RULES_FILE = Path(__file__).resolve().parent.parent / "alerts.yml"
GROUP = "orchestrator"

HEARTBEAT_STALE_S = 60          # well past health.hang_timeout_s: the supervisor failed to recover
NAN_WINDOW_S = 300
SPIKE_WINDOW_S = 600
TRANSIENT_WINDOW_S = 3600       # a repeat within the hour on one node is a failing GPU, not bad luck
SPIKE_KINDS = ("loss_spike", "bad_data", "dynamics", "divergence")  # spec/faults.py: alert LossSpike
STRAGGLER_SCORE = 1.5           # slowest node's step time over the median node's
RESTART_LOOP_COUNT = 3
RESTART_LOOP_WINDOW_S = 900
CHECKPOINT_STALE_S = 1800
GOODPUT_MIN = 0.7
GOODPUT_MIN_WALL_S = 600        # ignore the start-up minutes where any launch dominates
RUNNING = 'orchestrator_run_state{state="RUNNING"} == 1'


@dataclass(frozen=True)
class Limits:
    """Per-run values a rule needs beyond the snapshot (exported as series for the PromQL side)."""

    restart_budget: int | None = None


#: (snapshot, now, limits) -> the alert's value when the condition holds, else None.
Evaluator = Callable[[RunSnapshot, float, Limits], "float | None"]


@dataclass(frozen=True)
class AlertRule:
    """One alert: Prometheus rule fields plus the equivalent Python condition."""

    name: str
    expr: str
    for_s: int
    severity: str
    summary: str
    evaluate: Evaluator

    def to_rule(self) -> dict[str, object]:
        """The Prometheus rule-file form (``alert``, ``expr``, ``for``, labels, annotations)."""
        return {"alert": self.name, "expr": self.expr, "for": _duration(self.for_s),
                "labels": {"severity": self.severity},
                "annotations": {"summary": self.summary}}


def _duration(seconds: int) -> str:
    """Prometheus duration text: whole minutes as ``Nm``, otherwise ``Ns``."""
    return f"{seconds // 60}m" if seconds and seconds % 60 == 0 else f"{seconds}s"


def _running(snap: RunSnapshot) -> bool:
    return snap.state == "RUNNING"


def _recent(snap: RunSnapshot, now: float, window_s: float, *, kind: str | None = None,
            action: str | None = None) -> int:
    """Fault records within the window matching kind/action: the Python form of increase()[w]."""
    return sum(1 for f in snap.faults
               if (kind is None or f.kind == kind) and (action is None or f.action == action)
               and f.t > 0 and now - window_s <= f.t <= now)


def _stalled(snap: RunSnapshot, now: float, lim: Limits) -> float | None:
    age = snap.heartbeat_age_max_s
    return age if _running(snap) and age is not None and age > HEARTBEAT_STALE_S else None


def _nan_loss(snap: RunSnapshot, now: float, lim: Limits) -> float | None:
    if snap.loss is not None and not math.isfinite(snap.loss):
        return snap.loss
    n = _recent(snap, now, NAN_WINDOW_S, kind="nan")
    return float(n) if n else None


def _loss_spike(snap: RunSnapshot, now: float, lim: Limits) -> float | None:
    n = sum(_recent(snap, now, SPIKE_WINDOW_S, kind=k) for k in SPIKE_KINDS)
    return float(n) if n else None


def _transient(snap: RunSnapshot, now: float, lim: Limits) -> float | None:
    n = _recent(snap, now, TRANSIENT_WINDOW_S, kind="transient_fault")
    return float(n) if n else None


def _straggler(snap: RunSnapshot, now: float, lim: Limits) -> float | None:
    score = snap.straggler_score_max
    return score if _running(snap) and score is not None and score > STRAGGLER_SCORE else None


def _excluded(snap: RunSnapshot, now: float, lim: Limits) -> float | None:
    return float(len(snap.excluded_nodes)) if snap.excluded_nodes else None


def _restart_loop(snap: RunSnapshot, now: float, lim: Limits) -> float | None:
    n = _recent(snap, now, RESTART_LOOP_WINDOW_S, action="relaunch")
    return float(n) if n >= RESTART_LOOP_COUNT else None


def _ckpt_stale(snap: RunSnapshot, now: float, lim: Limits) -> float | None:
    age = checkpoint_age_s(snap, now)
    return age if _running(snap) and age is not None and age > CHECKPOINT_STALE_S else None


def _goodput_low(snap: RunSnapshot, now: float, lim: Limits) -> float | None:
    g = snap.goodput
    return g if g is not None and g < GOODPUT_MIN and snap.wall_s > GOODPUT_MIN_WALL_S else None


def _budget_exhausted(snap: RunSnapshot, now: float, lim: Limits) -> float | None:
    budget = restart_budget_of(snap, lim.restart_budget)
    return float(snap.restarts) if budget is not None and snap.restarts >= budget else None


def _failed(snap: RunSnapshot, now: float, lim: Limits) -> float | None:
    return 1.0 if snap.state == "FAILED" else None


RULES: tuple[AlertRule, ...] = (
    AlertRule("TrainingStalled",
              f"orchestrator_heartbeat_age_max_seconds > {HEARTBEAT_STALE_S} and on(run) {RUNNING}",
              60, "critical",
              f"Run {{{{ $labels.run }}}}: a rank has sent no heartbeat for over {HEARTBEAT_STALE_S}s "
              "while RUNNING. Read the stalest rank's log under logs/attempt-<k>/ (py-spy dump it if "
              "alive); if the supervisor did not relaunch, cancel and `orchestrator resume`.", _stalled),
    AlertRule("NaNLoss",
              "orchestrator_loss != orchestrator_loss or abs(orchestrator_loss) == Inf"
              f' or increase(orchestrator_faults_total{{kind="nan"}}[{_duration(NAN_WINDOW_S)}]) > 0',
              0, "critical",
              "Run {{ $labels.run }}: a NaN/Inf loss was skipped without a replay (policy.replay off, its "
              "budget spent, or fp16). If it repeats, lower train.lr, check train.precision (fp16 "
              "overflows) and the batch at that step.",
              _nan_loss),
    AlertRule("LossSpike",
              f'increase(orchestrator_faults_total{{kind=~"{"|".join(SPIKE_KINDS)}"}}'
              f"[{_duration(SPIKE_WINDOW_S)}]) > 0",
              0, "warning",
              "Run {{ $labels.run }}: the loss jumped above median + k*MAD and it was not a one-off "
              "(bad_data: the batch, replayed elsewhere too, skipped; dynamics/divergence: the model, "
              "rolled back if it persists; loss_spike: skipped unreplayed). If spikes repeat, lower "
              "train.lr or raise train.grad_clip.",
              _loss_spike),
    AlertRule("TransientFault",
              f'increase(orchestrator_faults_total{{kind="transient_fault"}}[{_duration(TRANSIENT_WINDOW_S)}]) > 0',
              0, "warning",
              "Run {{ $labels.run }}: a NaN or spike did not reproduce when its step was replayed: the "
              "clean result was applied and the event counted against the node (journal.jsonl replay "
              "line). Repeats on one node make it a lemon; test it with `orchestrator probe --probes burn_in` on it.",
              _transient),
    AlertRule("StragglerDetected",
              f"orchestrator_straggler_score_max > {STRAGGLER_SCORE} and on(run) {RUNNING}",
              60, "warning",
              f"Run {{{{ $labels.run }}}}: a node is over {STRAGGLER_SCORE}x slower than the median node. "
              "Find it in the report's step-time heatmap; check its CPU/GPU clocks, or set "
              "policy.straggler_action: exclude.", _straggler),
    AlertRule("NodeExcluded", "orchestrator_excluded_nodes > 0", 0, "warning",
              "Run {{ $labels.run }}: a node was excluded from the run. Drain and inspect it "
              "(journal.jsonl node_excluded has the reason) before returning it to the pool.",
              _excluded),
    AlertRule("RestartLoop",
              f'increase(orchestrator_actions_total{{action="relaunch"}}[{_duration(RESTART_LOOP_WINDOW_S)}])'
              f" >= {RESTART_LOOP_COUNT}",
              0, "critical",
              f"Run {{{{ $labels.run }}}}: {RESTART_LOOP_COUNT} or more relaunches in "
              f"{RESTART_LOOP_WINDOW_S // 60} minutes. The same fault is recurring: read the faults "
              "in journal.jsonl, exclude the bad node or fix the config instead of relaunching.",
              _restart_loop),
    AlertRule("CheckpointStale",
              f"orchestrator_checkpoint_age_seconds > {CHECKPOINT_STALE_S} and on(run) {RUNNING}",
              300, "warning",
              f"Run {{{{ $labels.run }}}}: no committed checkpoint for over {CHECKPOINT_STALE_S // 60} "
              "minutes; a crash now loses all that work. Check disk space and checkpoint_bad events, "
              "or lower checkpoint.every_steps.", _ckpt_stale),
    AlertRule("GoodputLow",
              f"orchestrator_goodput_ratio < {GOODPUT_MIN} and on(run) "
              f"orchestrator_wall_seconds > {GOODPUT_MIN_WALL_S}",
              600, "warning",
              f"Run {{{{ $labels.run }}}}: under {GOODPUT_MIN:.0%} of wall time is productive. See "
              "orchestrator_lost_seconds_total by cause: checkpoint (save less often), restart "
              "(fix the recurring fault), recomputation (checkpoint more often).", _goodput_low),
    AlertRule("RestartBudgetExhausted",
              "orchestrator_restarts_total >= on(run) orchestrator_restart_budget",
              0, "critical",
              "Run {{ $labels.run }}: the restart budget is used up; the next fault fails the run. "
              "Fix the cause, then raise policy.restart_budget and `orchestrator resume`.",
              _budget_exhausted),
    AlertRule("RunFailed", 'orchestrator_run_state{state="FAILED"} == 1', 0, "critical",
              "Run {{ $labels.run }} has FAILED. `orchestrator status` shows the reason; fix it and "
              "`orchestrator resume` from the last committed checkpoint.", _failed),
)


class AlertTracker:
    """Remembers when each condition became true, so ``activeAt`` and ``for`` behave as in Prometheus.

    A condition that holds is ``pending`` until it has held for the rule's ``for``, then ``firing``;
    the first evaluation where it no longer holds forgets it. Thread-safe: the HTTP server's request
    threads share one tracker.
    """

    def __init__(self, rules: tuple[AlertRule, ...] = RULES, limits: Limits | None = None) -> None:
        self.rules = rules
        self.limits = limits or Limits()
        self._since: dict[str, float] = {}
        self._lock = threading.Lock()

    def evaluate(self, snap: RunSnapshot, now: float) -> list[dict[str, Any]]:
        """All active alerts (pending and firing), in the /api/v1/alerts shape."""
        out: list[dict[str, Any]] = []
        with self._lock:
            for rule in self.rules:
                value = rule.evaluate(snap, now, self.limits)
                if value is None:
                    self._since.pop(rule.name, None)
                    continue
                since = self._since.setdefault(rule.name, now)
                state = "firing" if now - since >= rule.for_s else "pending"
                out.append(alert_dict(rule, snap, value, since, state))
        return out

    def firing(self, snap: RunSnapshot, now: float) -> list[dict[str, Any]]:
        return [a for a in self.evaluate(snap, now) if a["state"] == "firing"]


def firing_alerts(snapshot: RunSnapshot, now: float, tracker: AlertTracker | None = None,
                  limits: Limits | None = None) -> list[dict[str, Any]]:
    """Firing alerts for ``snapshot`` at ``now`` (unix seconds), in the /api/v1/alerts shape.

    With a ``tracker`` the rules' ``for`` durations and ``activeAt`` carry over between calls. Without
    one (a one-shot ``orchestrator status``) there is no history: every condition that holds now is
    reported as firing, active since ``now``.
    """
    if tracker is not None:
        return tracker.firing(snapshot, now)
    lim = limits or Limits()
    return [alert_dict(r, snapshot, v, now, "firing") for r in RULES
            if (v := r.evaluate(snapshot, now, lim)) is not None]


def alert_dict(rule: AlertRule, snap: RunSnapshot, value: float, since: float,
               state: str) -> dict[str, Any]:
    """One alert as Prometheus' HTTP API returns it (``value`` is a string there too)."""
    run = snap.name or "run"
    return {"labels": {"alertname": rule.name, "severity": rule.severity, "run": run},
            "annotations": {"summary": rule.summary.replace("{{ $labels.run }}", run)},
            "state": state, "activeAt": rfc3339(since), "value": _go_float(value)}


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def _go_float(v: float) -> str:
    """Spell a float the way Prometheus' API does for the special values."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def rules_text(rules: tuple[AlertRule, ...] = RULES) -> str:
    """The Prometheus rule file for ``rules``, byte-for-byte what ``orchestrator/alerts.yml`` holds."""
    doc = {"groups": [{"name": GROUP, "rules": [r.to_rule() for r in rules]}]}
    header = ("# Generated by `python -m orchestrator.metrics.alerts`; do not edit.\n"
              "# Source of truth: orchestrator/metrics/alerts.py (RULES).\n")
    return header + yaml.safe_dump(doc, sort_keys=False, width=1_000_000, allow_unicode=True)


def rule_names(rules: tuple[AlertRule, ...] = RULES) -> list[str]:
    return [r.name for r in rules]


if __name__ == "__main__":  # pragma: no cover - exercised via subprocess in the tests
    import sys

    sys.stdout.write(rules_text())
