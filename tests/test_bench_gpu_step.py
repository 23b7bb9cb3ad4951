"""benchmarks/bench_gpu_step.py runs end to end (on the CPU here, with the same code path as on a GPU):
the supervised run and the bare trainer both yield step times."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.slow
def test_step_time_with_and_without_supervisor_on_cpu(tmp_path: Path) -> None:
    from benchmarks import bench_gpu_step
    out = tmp_path / "step.json"
    assert bench_gpu_step.main(["--device", "cpu", "--steps", "12", "--repeats", "1", "--d-model", "32",
                                "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert {r["mode"] for r in rows} == {"supervisor", "bare"}
    assert all(r["steps"] >= 5 and r["median_step_s"] > 0 for r in rows)
