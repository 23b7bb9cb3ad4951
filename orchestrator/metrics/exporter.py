"""A prometheus-client collector that renders a :class:`RunSnapshot` as ``orchestrator_*`` series.

Why a custom collector rather than Gauge objects updated by the supervisor: the snapshot already is
the state, so rendering it at scrape time keeps one source of truth and needs no locking or global
registry. Every series carries one label, ``run`` (the snapshot's name). Per-rank data is reduced to a
median, a max and the rank holding the max, so cardinality does not grow with the world size.

Series names are listed in :data:`SERIES`; the alert rules in :mod:`orchestrator.metrics.alerts` are
written against them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from spec.faults import FAULTS
from orchestrator.snapshot import RunSnapshot
from orchestrator.state import RunState

PREFIX = "orchestrator_"
#: Run states always exported (value 0 or 1) so a `state="X"` selector has a series before X happens.
STATES = tuple(s.value for s in RunState)
#: Actions from docs/RUNDIR.md, exported at 0 from the start so increase() sees the first one.
ACTIONS = ("skip_step", "rollback", "relaunch", "exclude_node", "alert", "abort", "requeue")
LOST_CAUSES = ("detection", "restart", "recomputation", "checkpoint", "straggler", "replay", "other")
#: Why a telemetry datagram was dropped (orchestrator.telemetry_server.REJECT_REASONS), exported at 0.
REJECT_REASONS = ("no_mac", "bad_mac", "replay", "malformed", "too_large")

#: name (without prefix) -> help text; the gauges read straight from a snapshot attribute.
_GAUGES: dict[str, tuple[str, str]] = {
    "step": ("step", "Last optimizer step applied."),
    "total_steps": ("total_steps", "Steps the run is configured for."),
    "loss": ("loss", "Training loss of the last step (NaN when the step produced NaN)."),
    "eval_loss": ("eval_loss", "Last evaluation loss."),
    "grad_norm": ("grad_norm", "Gradient norm of the last step, before clipping."),
    "learning_rate": ("lr", "Learning rate of the last step."),
    "tokens_per_second": ("tokens_per_s", "Training throughput over all ranks."),
    "step_time_median_seconds": ("step_time_median_s", "Median over ranks of the last step time."),
    "step_time_max_seconds": ("step_time_max_s", "Step time of the slowest rank."),
    "slowest_rank": ("slowest_rank", "Rank with the largest step time."),
    "heartbeat_age_max_seconds": ("heartbeat_age_max_s", "Age of the stalest rank's heartbeat."),
    "checkpoint_save_seconds": ("checkpoint_save_s", "Duration of the last checkpoint save."),
    "checkpoint_load_seconds": ("checkpoint_load_s", "Duration of the last checkpoint load."),
    "goodput_ratio": ("goodput", "Productive wall time over total wall time, 0..1."),
    "productive_seconds": ("productive_s", "Wall time that produced kept training."),
    "wall_seconds": ("wall_s", "Wall time since the run started."),
    "straggler_score_max": ("straggler_score_max", "Worst node's step time over the median node's."),
    "attempt": ("attempt", "Current launch attempt (0-based)."),
}
#: name (without prefix and _total) -> (attribute, help)
_COUNTERS: dict[str, tuple[str, str]] = {
    "restarts": ("restarts", "Relaunches of the job since the run started."),
    "steps_lost_to_rollbacks": ("steps_lost_to_rollbacks", "Steps recomputed after rollbacks."),
    "batches_skipped": ("batches_skipped", "Batches skipped (bad steps, skip after rollback)."),
    "telemetry_rejected": ("telemetry_rejected", "Telemetry datagrams dropped (no or wrong MAC, replay, malformed)."),
}

SERIES: tuple[str, ...] = tuple(
    [PREFIX + n for n in _GAUGES]
    + [PREFIX + "node_step_time_seconds"]
    + [PREFIX + n + "_total" for n in _COUNTERS]
    + [PREFIX + n for n in ("run_state", "excluded_nodes", "checkpoint_age_seconds",
                            "last_checkpoint_step", "restart_budget")]
    + [PREFIX + n + "_total" for n in ("faults", "actions", "lost_seconds", "telemetry_rejected_by_reason")]
)


def _finite_or_nan(value: float | int | None) -> float | None:
    """None stays None (series omitted); anything else becomes a float, NaN/Inf kept as they are."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class SnapshotCollector(Collector):
    """Collects ``orchestrator_*`` metric families from ``snapshot()`` at every scrape.

    ``clock`` gives "now" for the checkpoint age (injected so tests are deterministic);
    ``restart_budget`` (``policy.restart_budget``) is exported so RestartBudgetExhausted can compare.
    """

    def __init__(self, snapshot: Callable[[], RunSnapshot], clock: Callable[[], float] = time.time,
                 restart_budget: int | None = None) -> None:
        self._snapshot = snapshot
        self._clock = clock
        self._restart_budget = restart_budget

    def describe(self) -> Iterable[Metric]:
        """No describe-time families: registering must not call the supervisor's snapshot."""
        return []

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        run = snap.name or "run"
        yield from self._plain_gauges(snap, run)
        yield from self._plain_counters(snap, run)
        yield self._state(snap, run)
        yield self._gauge("excluded_nodes", "Nodes excluded from the run.", run,
                          float(len(snap.excluded_nodes)))
        yield from self._checkpoint(snap, run)
        yield self._node_step_times(snap, run)
        budget = restart_budget_of(snap, self._restart_budget)
        if budget is not None:
            yield self._gauge("restart_budget", "Relaunches allowed (policy.restart_budget).", run,
                              float(budget))
        yield self._labelled_counter("faults", "Faults detected, by kind.", run, "kind",
                                     _with_zeros(snap.faults_by_kind(), tuple(FAULTS)))
        yield self._labelled_counter("actions", "Recovery actions taken, by action.", run, "action",
                                     _with_zeros(snap.actions, ACTIONS))
        lost = {c: float(getattr(snap.lost, c)) for c in LOST_CAUSES}
        yield self._labelled_counter("lost_seconds", "Wall time lost, by cause.", run, "cause", lost)
        yield self._labelled_counter("telemetry_rejected_by_reason", "Telemetry datagrams dropped, by reason.",
                                     run, "reason", _with_zeros(snap.telemetry_rejected_by, REJECT_REASONS))

    def _plain_gauges(self, snap: RunSnapshot, run: str) -> Iterator[Metric]:
        for name, (attr, doc) in _GAUGES.items():
            value = _finite_or_nan(getattr(snap, attr))
            if value is not None:
                yield self._gauge(name, doc, run, value)

    def _plain_counters(self, snap: RunSnapshot, run: str) -> Iterator[Metric]:
        for name, (attr, doc) in _COUNTERS.items():
            fam = CounterMetricFamily(PREFIX + name, doc, labels=["run"])
            fam.add_metric([run], float(getattr(snap, attr)))
            yield fam

    def _state(self, snap: RunSnapshot, run: str) -> Metric:
        """One-hot: value 1 for the current state, 0 for the others, so `== 1` selects it."""
        fam = GaugeMetricFamily(PREFIX + "run_state", "1 for the run's current state.",
                                labels=["run", "state"])
        states = STATES if snap.state in STATES else (*STATES, snap.state)
        for state in states:
            fam.add_metric([run, state], 1.0 if state == snap.state else 0.0)
        return fam

    def _checkpoint(self, snap: RunSnapshot, run: str) -> Iterator[Metric]:
        age = checkpoint_age_s(snap, self._clock())
        if age is not None:
            yield self._gauge("checkpoint_age_seconds",
                              "Seconds since the last committed checkpoint (since start if none).",
                              run, age)
        if snap.last_checkpoint_step is not None:
            yield self._gauge("last_checkpoint_step", "Step of the last committed checkpoint.", run,
                              float(snap.last_checkpoint_step))

    @staticmethod
    def _node_step_times(snap: RunSnapshot, run: str) -> Metric:
        """One series per active node (its slowest rank): bounded by nodes, not ranks, and what a
        dashboard's "step time per node" panel shows."""
        fam = GaugeMetricFamily(PREFIX + "node_step_time_seconds",
                                "Last step's compute time of each node's slowest rank.", labels=["run", "node"])
        for node in sorted(snap.node_step_time_s):
            fam.add_metric([run, node], float(snap.node_step_time_s[node]))
        return fam

    @staticmethod
    def _gauge(name: str, doc: str, run: str, value: float) -> GaugeMetricFamily:
        fam = GaugeMetricFamily(PREFIX + name, doc, labels=["run"])
        fam.add_metric([run], value)
        return fam

    @staticmethod
    def _labelled_counter(name: str, doc: str, run: str, label: str,
                          values: dict[str, float]) -> CounterMetricFamily:
        fam = CounterMetricFamily(PREFIX + name, doc, labels=["run", label])
        for key in sorted(values):
            fam.add_metric([run, key], float(values[key]))
        return fam


def _with_zeros(counts: dict[str, int], known: Iterable[str]) -> dict[str, float]:
    """Known keys at 0 plus the observed counts: a counter must exist before its first increment."""
    out = {k: 0.0 for k in known}
    out.update({k: float(v) for k, v in counts.items()})
    return out


def checkpoint_age_s(snap: RunSnapshot, now: float) -> float | None:
    """Seconds since the last committed checkpoint, or since the run started when there is none."""
    ref = snap.last_checkpoint_t if snap.last_checkpoint_t is not None else snap.started_t
    if ref is None:
        return None
    return max(0.0, now - ref)


def restart_budget_of(snap: RunSnapshot, override: int | None) -> int | None:
    """The restart budget: the explicit one, else a ``restart_budget`` field if the snapshot has one."""
    if override is not None:
        return override
    value = getattr(snap, "restart_budget", None)
    return int(value) if isinstance(value, int | float) else None
