"""A plain snapshot of where a run stands: what status, metrics and alerts read.

The supervisor owns and updates one :class:`RunSnapshot`; exporters (Prometheus metrics, /alerts,
``status --json``) only read it. It is also written atomically to ``RUN_DIR/status.json`` so any
command can answer from the run directory alone.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"


@dataclass
class FaultRecord:
    kind: str
    step: int | None
    rank: int | None
    node: int | None
    detected_after_s: float | None
    action: str
    lost_steps: int = 0
    lost_s: float = 0.0
    t: float = 0.0
    detail: str = ""
    injected_t: float | None = None  # when chaos injected it (ground truth); None: not injected
    detected_t: float | None = None
    verdict: str | None = None  # a replayed in-step fault: data | transient | hardware | dynamics


@dataclass
class LostTime:
    """Wall time that produced no kept training, by cause (seconds)."""

    detection: float = 0.0
    restart: float = 0.0
    recomputation: float = 0.0
    checkpoint: float = 0.0
    straggler: float = 0.0  # the excess of steps held back by a straggler over a normal step
    replay: float = 0.0  # replaying flagged steps to find their cause (trainer.replay)
    # The rest of the wall time that no kept step and no cause above accounts for (evaluation, the loop's
    # work between steps, shutdown), so the breakdown always adds up to wall - productive.
    other: float = 0.0

    def named(self) -> float:
        return (self.detection + self.restart + self.recomputation + self.checkpoint + self.straggler
                + self.replay)

    def total(self) -> float:
        return self.named() + self.other


@dataclass
class RunSnapshot:
    name: str = ""
    state: str = "PENDING"
    reason: str = ""
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    eval_loss: float | None = None
    grad_norm: float | None = None
    lr: float | None = None
    tokens_per_s: float | None = None
    step_time_median_s: float | None = None
    step_time_max_s: float | None = None
    slowest_rank: int | None = None
    node_step_time_s: dict[str, float] = field(default_factory=dict)  # node → its slowest rank, last step
    heartbeat_age_max_s: float | None = None
    goodput: float | None = None
    productive_s: float = 0.0
    wall_s: float = 0.0
    lost: LostTime = field(default_factory=LostTime)
    restarts: int = 0
    attempt: int = 0
    excluded_nodes: list[str] = field(default_factory=list)
    active_nodes: list[str] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    actions: dict[str, int] = field(default_factory=dict)
    steps_lost_to_rollbacks: int = 0
    batches_skipped: int = 0
    last_checkpoint_step: int | None = None
    last_checkpoint_t: float | None = None
    predicted_goodput: float | None = None  # checkpoint intervals on auto: what the tuner expects
    intervals: dict[str, int] = field(default_factory=dict)  # the tuner's current steps per tier
    last_memory_step: int | None = None  # newest memory-tier copy rank 0 reported (trainer.memtier)
    checkpoint_save_s: float | None = None
    checkpoint_load_s: float | None = None
    straggler_score_max: float | None = None
    telemetry_rejected: int = 0
    telemetry_rejected_by: dict[str, int] = field(default_factory=dict)  # reason → count
    telemetry_sources: dict[str, str] = field(default_factory=dict)  # node → where its datagrams came from
    stale_epoch_rejected: int = 0  # telemetry and checkpoints of a fenced (older) epoch
    started_t: float | None = None
    updated_t: float | None = None
    jobs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def faults_by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.faults:
            out[f.kind] = out.get(f.kind, 0) + 1
        return out


def write_status(run_dir: str | Path, snap: RunSnapshot) -> None:
    """Atomically replace RUN_DIR/status.json (write a temp file, fsync, rename)."""
    run_dir = Path(run_dir)
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".status.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(snap.to_dict(), f, indent=1, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, run_dir / STATUS_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    p = Path(run_dir) / STATUS_FILE
    try:
        return json.loads(p.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
