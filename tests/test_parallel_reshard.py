"""DCP checkpoints saved in one layout resume in another with the same next losses."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.layout_harness import spawn

TOL = 1e-4
STEPS, SAVE_AT = 5, 3


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[float]]:
    """Train at dp=2,tp=2 (sequence parallel, FSDP), save at step 3, keep going to step 5."""
    tmp = tmp_path_factory.mktemp("reshard")
    ckpt = tmp / "ckpt"
    job = {"name": "save", "cfg": {"dp": 2, "tp": 2, "sp": True}, "steps": STEPS,
           "save": str(ckpt), "save_at": SAVE_AT}
    res = spawn(4, [job], str(tmp))
    return ckpt, res[0][0]["loss"]


@pytest.mark.parametrize("world,layout", [
    (2, {"tp": 2}),
    (1, {"dp_mode": "fsdp"}),
    (2, {"pp": 2, "schedule": "gpipe"}),
])
def test_resume_in_another_layout(saved: tuple[Path, list[float]], tmp_path: Path, world: int,
                                  layout: dict[str, object]) -> None:
    ckpt, uninterrupted = saved
    job = {"name": "load", "cfg": layout, "steps": STEPS, "load": str(ckpt), "resume_at": SAVE_AT}
    res = spawn(world, [job], str(tmp_path))
    for r in range(world):
        got = res[r][0]["loss"]
        assert len(got) == STEPS - SAVE_AT
        for a, b in zip(got, uninterrupted[SAVE_AT:]):
            assert abs(a - b) < TOL, (layout, got, uninterrupted[SAVE_AT:])
