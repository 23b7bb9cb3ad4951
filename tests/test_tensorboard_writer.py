"""metrics.tensorboard: the supervisor's snapshots become TensorBoard scalars and fault/recovery text,
read back with TensorBoard's own EventAccumulator. (The faulty run in test_prometheus_training.py
checks the same on a real run.)"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from orchestrator.config_load import ConfigError, load_config_data  # noqa: E402
from orchestrator.snapshot import FaultRecord, RunSnapshot  # noqa: E402
from orchestrator.tensorboard_writer import LOG_DIR, TensorBoardSink, open_writer  # noqa: E402


def read_events(logdir: Path) -> EventAccumulator:
    """Every scalar and text event (size guidance 0: keep all, no reservoir sampling)."""
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def texts(acc: EventAccumulator, tag: str) -> list[tuple[int, str]]:
    """Text events of ``tag`` (SummaryWriter.add_text stores them as ``<tag>/text_summary``)."""
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(f"{tag}/text_summary")]


def scalars(acc: EventAccumulator, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in acc.Scalars(tag)}


def _feed(sink: TensorBoardSink) -> None:
    s = RunSnapshot(name="r", state="PENDING", total_steps=10)
    sink.update(s)  # nothing yet
    s.state = "RUNNING"
    for step in range(1, 6):
        s.step, s.loss, s.lr, s.grad_norm, s.tokens_per_s, s.goodput = step, 3.0 - step * 0.1, 1e-3, 0.5, 1000.0, 0.9
        sink.update(s)
        sink.update(s)  # same step twice: written once
    s.faults.append(FaultRecord("nan", 5, 1, 0, 0.01, "skip_step"))
    s.faults.append(FaultRecord("node_failure", 5, None, 1, 0.4, "exclude_node", lost_steps=3))
    s.state = "RECOVERING"
    sink.update(s)
    s.state, s.attempt, s.restarts, s.excluded_nodes, s.step = "RUNNING", 1, 1, ["node1"], 6
    s.eval_loss = 2.5
    sink.update(s)
    s.loss = math.nan
    s.step, s.state = 7, "COMPLETED"
    sink.update(s)


def test_scalars_faults_and_recoveries_read_back(tmp_path: Path) -> None:
    sink = TensorBoardSink(open_writer(tmp_path))
    _feed(sink)
    sink.close()
    acc = read_events(tmp_path / LOG_DIR)
    loss = scalars(acc, "train/loss")
    assert sorted(loss) == [1, 2, 3, 4, 5, 6, 7]
    assert loss[1] == pytest.approx(2.9) and math.isnan(loss[7])
    for tag in ("train/lr", "train/grad_norm", "train/tokens_per_s", "run/goodput", "run/restarts"):
        assert len(acc.Scalars(tag)) == 7, tag
    assert scalars(acc, "eval/loss") == {6: 2.5}
    faults = texts(acc, "faults")
    assert [step for step, _ in faults] == [5, 5]
    assert "**nan** at step 5 (rank 1, node 0)" in faults[0][1] and "→ skip_step" in faults[0][1]
    assert "node 1" in faults[1][1] and "3 steps lost" in faults[1][1]
    recoveries = [t for _, t in texts(acc, "recoveries")]
    assert recoveries[0].startswith("running again at step 6 (attempt 1, 1 restarts, excluded: node1)")
    assert recoveries[-1] == "run COMPLETED at step 7"


class _Broken:
    def add_scalar(self, *a: Any, **k: Any) -> None:
        raise OSError("disk full")

    add_text = add_scalar

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_failing_writer_disables_itself(caplog: pytest.LogCaptureFixture) -> None:
    sink = TensorBoardSink(_Broken())
    _feed(sink)  # never raises
    assert sink._broken
    assert sum("tensorboard writer failed" in r.message for r in caplog.records) == 1


def test_config_field() -> None:
    assert load_config_data({"metrics": {"tensorboard": True}}).metrics.tensorboard is True
    with pytest.raises(ConfigError, match="metrics.tensorboard"):
        load_config_data({"metrics": {"tensorboard": "sometimes"}})
