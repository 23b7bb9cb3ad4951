"""TensorBoard for a run (``metrics.tensorboard: true``): scalars per step and each fault and recovery
as a text event, in ``RUN_DIR/tensorboard``.

Why from the supervisor and not the ranks: one writer sees the whole run (goodput, faults, relaunches)
and a relaunch does not leave one event file per rank per attempt. It listens to the supervisor's
snapshot updates (``on_update``) and writes only what changed since the last call, so the cost per
supervisor tick is a few comparisons. Like the metrics endpoint, it must never take training down:
the first error disables it and is logged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

from orchestrator.snapshot import FaultRecord, RunSnapshot
from orchestrator.state import RunState

log = logging.getLogger(__name__)
LOG_DIR = "tensorboard"
#: tag -> snapshot attribute, written at every new step
STEP_SCALARS = {"train/loss": "loss", "train/lr": "lr", "train/grad_norm": "grad_norm",
                "train/tokens_per_s": "tokens_per_s", "run/goodput": "goodput", "run/restarts": "restarts"}
EVAL_TAG, FAULT_TAG, RECOVERY_TAG = "eval/loss", "faults", "recoveries"


class ScalarTextWriter(Protocol):
    """The two calls we use of torch.utils.tensorboard.SummaryWriter (a fake in unit tests)."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> None: ...
    def add_text(self, tag: str, text_string: str, global_step: int | None = None) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def open_writer(run_dir: Path) -> ScalarTextWriter:
    """A SummaryWriter on RUN_DIR/tensorboard (appends a new event file on resume; TensorBoard merges)."""
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(log_dir=str(run_dir / LOG_DIR), flush_secs=5)


def fault_text(f: FaultRecord) -> str:
    """One line a human reads in TensorBoard's Text tab; unknown fields read as '?'."""
    where = ", ".join(f"{k} {v}" for k, v in (("rank", f.rank), ("node", f.node)) if v is not None) or "where unknown"
    after = f", detected after {f.detected_after_s:.2f}s" if f.detected_after_s is not None else ""
    lost = f", {f.lost_steps} steps lost" if f.lost_steps else ""
    return f"**{f.kind}** at step {'?' if f.step is None else f.step} ({where}){after} → {f.action}{lost}"


class TensorBoardSink:
    """Feeds a writer from snapshots: call :meth:`update` with each snapshot, :meth:`close` at the end."""

    def __init__(self, writer: ScalarTextWriter) -> None:
        self.writer = writer
        self._step: int | None = None
        self._eval: float | None = None
        self._faults = 0
        self._state: str | None = None
        self._broken = False

    def update(self, snap: RunSnapshot) -> None:
        if self._broken:
            return
        try:
            self._scalars(snap)
            self._faults_and_recoveries(snap)
        except Exception:  # best effort: TensorBoard must not stop the supervisor
            log.exception("tensorboard writer failed; no more TensorBoard events for this run")
            self._broken = True

    def _scalars(self, s: RunSnapshot) -> None:
        if s.step and s.step != self._step:
            self._step = s.step
            for tag, attr in STEP_SCALARS.items():
                value = _number(getattr(s, attr))
                if value is not None:
                    self.writer.add_scalar(tag, value, s.step)
        ev = _number(s.eval_loss)
        if ev is not None and ev != self._eval:  # a new evaluation (the snapshot keeps the last one)
            self._eval = ev
            self.writer.add_scalar(EVAL_TAG, ev, s.step)

    def _faults_and_recoveries(self, s: RunSnapshot) -> None:
        for f in s.faults[self._faults:]:
            self.writer.add_text(FAULT_TAG, fault_text(f), f.step if f.step is not None else s.step)
        self._faults = max(self._faults, len(s.faults))
        if self._state == RunState.RECOVERING.value and s.state == RunState.RUNNING.value:
            self.writer.add_text(RECOVERY_TAG, f"running again at step {s.step} (attempt {s.attempt}, "
                                 f"{s.restarts} restarts, excluded: {', '.join(s.excluded_nodes) or 'none'})", s.step)
        if s.state != self._state and s.state in (RunState.COMPLETED.value, RunState.FAILED.value):
            self.writer.add_text(RECOVERY_TAG, f"run {s.state} at step {s.step}" + (f": {s.reason}" if s.reason else ""),
                                 s.step)
        self._state = s.state

    def close(self) -> None:
        try:
            self.writer.flush()
            self.writer.close()
        except Exception:
            log.exception("closing the tensorboard writer failed")


def _number(x: Any) -> float | None:
    """A float TensorBoard can plot; None for missing values (NaN/Inf are kept: they are the news)."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x)
