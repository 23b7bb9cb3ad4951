"""Hang / silent / gone, on the mapping API and the vectorised one (which must agree)."""

from __future__ import annotations

import numpy as np

from health.detectors.hang import (LivenessArrays, RankLiveness, assess_liveness,
                                   assess_liveness_arrays)

NOW = 1000.0


def _cases() -> dict[int, RankLiveness]:
    return {
        0: RankLiveness(True, NOW - 0.2, NOW - 1.0, 50),     # healthy
        1: RankLiveness(True, NOW - 0.3, NOW - 30.0, 42),    # heartbeating, no progress: hang
        2: RankLiveness(False, NOW - 5.0, NOW - 5.0, 49),    # process exited: gone
        3: RankLiveness(True, NOW - 8.0, NOW - 8.0, 49),     # no heartbeat: silent (not hang)
        4: RankLiveness(True, None, None, None),             # not started: startup timeout's job
        5: RankLiveness(True, NOW - 0.1, None, None),        # heartbeating, no first step yet
    }


def test_kinds() -> None:
    found = assess_liveness(NOW, _cases(), hang_timeout_s=10.0, heartbeat_timeout_s=2.0)
    assert [(f.rank, f.kind) for f in found] == [(1, "hang"), (2, "gone"), (3, "silent")]
    by = {f.rank: f for f in found}
    assert abs(by[1].age_s - 30.0) < 1e-9 and "step 42" in by[1].detail
    assert abs(by[3].age_s - 8.0) < 1e-9


def test_thresholds_are_strict() -> None:
    s = {0: RankLiveness(True, NOW - 2.0, NOW - 10.0, 1)}
    assert assess_liveness(NOW, s, 10.0, 2.0) == []
    assert [f.kind for f in assess_liveness(NOW + 0.01, s, 10.0, 2.1)] == ["hang"]


def test_arrays_agree_with_mapping() -> None:
    cases = _cases()
    arr = LivenessArrays(len(cases))
    for r, s in cases.items():
        arr.alive[r] = s.alive
        arr.last_heartbeat_t[r] = np.nan if s.last_heartbeat_t is None else s.last_heartbeat_t
        arr.last_progress_t[r] = np.nan if s.last_progress_t is None else s.last_progress_t
        arr.step[r] = -1 if s.step is None else s.step
    assert assess_liveness_arrays(NOW, arr, 10.0, 2.0) == assess_liveness(NOW, cases, 10.0, 2.0)


def test_array_updates() -> None:
    arr = LivenessArrays(3)
    for r in range(3):
        arr.progress(r, 5, NOW - 1)
    arr.heartbeat(1, NOW)
    arr.exited(2)
    found = assess_liveness_arrays(NOW + 20, arr, 10.0, 30.0)
    assert [(f.rank, f.kind) for f in found] == [(0, "hang"), (1, "hang"), (2, "gone")]
