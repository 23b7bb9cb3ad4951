"""DCP checkpoints saved in one layout resume in another with the same next losses.

The resumes of one world size run as jobs of one process group forked from this process (a fresh group
imports torch: seconds each on two cores), once per session (``shared_json``), as in
tests/test_parallel_equivalence.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks.layout_harness import spawn
from tests.conftest import shared_json

TOL = 1e-4
STEPS, SAVE_AT = 5, 3
RESUMES: dict[str, tuple[int, dict[str, Any]]] = {  # name -> (world, layout)
    "tp2": (2, {"tp": 2}),
    "fsdp1": (1, {"dp_mode": "fsdp"}),
    "pp2-gpipe": (2, {"pp": 2, "schedule": "gpipe"}),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[float]]:
    """Train at dp=2,tp=2 (sequence parallel, FSDP), save at step 3, keep going to step 5."""
    def make(tmp: Path) -> list[Any]:
        ckpt = tmp / "ckpt"
        job = {"name": "save", "cfg": {"dp": 2, "tp": 2, "sp": True}, "steps": STEPS,
               "save": str(ckpt), "save_at": SAVE_AT}
        res = spawn(4, [job], str(tmp), start_method="fork")
        return [str(ckpt), res[0][0]["loss"]]
    ckpt, losses = shared_json(tmp_path_factory, "reshard-saved", make)
    return Path(ckpt), losses


@pytest.fixture(scope="module")
def resumed(saved: tuple[Path, list[float]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[list[float]]]:
    """name -> each rank's losses after resuming at step 3 from the saved checkpoint."""
    ckpt, _ = saved

    def make(tmp: Path) -> dict[str, list[list[float]]]:
        out: dict[str, list[list[float]]] = {}
        for world in sorted({w for w, _ in RESUMES.values()}):
            names = [n for n, (w, _) in RESUMES.items() if w == world]
            jobs = [{"name": n, "cfg": RESUMES[n][1], "steps": STEPS, "load": str(ckpt), "resume_at": SAVE_AT}
                    for n in names]
            (tmp / f"load{world}").mkdir()
            res = spawn(world, jobs, str(tmp / f"load{world}"), start_method="fork")
            out.update({n: [res[r][i]["loss"] for r in range(world)] for i, n in enumerate(names)})
        return out
    return shared_json(tmp_path_factory, "reshard-resumed", make)


@pytest.mark.parametrize("name", list(RESUMES))
def test_resume_in_another_layout(saved: tuple[Path, list[float]], resumed: dict[str, list[list[float]]],
                                  name: str) -> None:
    _, uninterrupted = saved
    world, layout = RESUMES[name]
    assert len(resumed[name]) == world
    for got in resumed[name]:
        assert len(got) == STEPS - SAVE_AT
        for a, b in zip(got, uninterrupted[SAVE_AT:]):
            assert abs(a - b) < TOL, (layout, got, uninterrupted[SAVE_AT:])
