"""``health.collective_timeout_s`` reaches the process group: with the heartbeat-based hang detector out
of the way (a long hang timeout), peers blocked on a hung rank raise after the collective timeout, exit,
and the run recovers through the rank-exit path. This is what a torchrun baseline relies on."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_submit


def test_peers_of_a_hung_rank_give_up_after_the_collective_timeout(tmp_path: Path) -> None:
    r = run_submit(tmp_path, {"train": {"steps": 30},
                              "health": {"hang_timeout_s": 120.0, "collective_timeout_s": 4.0},
                              "chaos": [{"fault": "hang", "step": 15, "rank": 2}]})
    assert r.code == 0, r.status.get("reason")
    kinds = [f["kind"] for f in r.status["faults"]]
    assert kinds and "hang" not in kinds, kinds  # found by the timeout's exits, not by heartbeats
    f = r.status["faults"][0]
    assert f["detected_after_s"] is not None and f["detected_after_s"] < 60.0, f
