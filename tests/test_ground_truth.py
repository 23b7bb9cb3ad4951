"""Detection latency from the injection (ground truth), not from the supervisor's own estimate."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.ground_truth import GroundTruth, read_injections


def _marker(run_dir: Path, i: int, fault: str, t: float, rank: int = 0) -> None:
    d = run_dir / "chaos"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"fired-{i}").write_text(json.dumps({"index": i, "fault": fault, "step": 5, "rank": rank,
                                              "node_index": 0, "t": t, "mono": 1.0}) + "\n")


def test_each_injection_is_claimed_once_by_a_matching_kind(tmp_path: Path) -> None:
    _marker(tmp_path, 0, "rank_crash", 100.0)
    _marker(tmp_path, 1, "node_failure", 200.0)
    (tmp_path / "chaos" / "fired-2").write_text("rank=0 t=5\n")  # old format: proves nothing
    gt = GroundTruth(tmp_path)
    assert [i.index for i in read_injections(tmp_path)] == [0, 1]
    assert gt.match("nan", 300.0) is None  # no nan was injected
    assert gt.match("silent", 150.0) is None  # the node failure came later than this detection
    first = gt.match("rank_crash", 101.5)
    assert first is not None and first.t == 100.0
    assert gt.match("rank_crash", 400.0) is None  # already claimed
    node = gt.match("silent", 203.0)
    assert node is not None and node.fault == "node_failure"


def test_chaos_marker_is_the_ground_truth_format(tmp_path: Path) -> None:
    from spec.config import ChaosFault
    from trainer.chaos import Chaos
    chaos = Chaos([ChaosFault(fault="nan", step=3, rank=1)], tmp_path, rank=1, node_index=0, ranks_per_node=2)
    assert not chaos.poison_loss(2) and chaos.poison_loss(3)
    [inj] = read_injections(tmp_path)
    assert (inj.fault, inj.step, inj.rank, inj.node_index) == ("nan", 3, 1, 0)
    assert inj.mono is not None and inj.t > 0
