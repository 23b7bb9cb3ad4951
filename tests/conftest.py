"""Shared fixtures: a small run config for the local cluster, and a helper that runs ``submit``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ.setdefault("OMP_NUM_THREADS", "1")

BASE: dict[str, Any] = {
    "name": "t",
    "cluster": {"backend": "local", "nodes": 2, "ranks_per_node": 2, "spare_nodes": 1},
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 4, "seq_len": 32},
    "data": {"max_bytes": 400_000},
    "train": {"steps": 60, "global_batch": 8, "lr": 0.003, "schedule": {"warmup_steps": 5}},
    "checkpoint": {"every_steps": 10, "keep": 3},
    "health": {"heartbeat_interval_s": 0.25, "hang_timeout_s": 3.0, "probes": ["node"],
               "straggler": {"window": 10, "factor": 1.5, "min_steps": 7}},
    "policy": {"restart_budget": 4, "backoff_initial_s": 0.05, "backoff_max_s": 0.5,
               "spike": {"window": 10, "k": 6.0, "warmup_steps": 10}},
    "metrics": {"enabled": False},
}


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class RunResult:
    def __init__(self, run_dir: Path, code: int) -> None:
        self.run_dir, self.code = run_dir, code
        self.journal = [json.loads(l) for l in (run_dir / "journal.jsonl").read_text().splitlines() if l]
        self.status = json.loads((run_dir / "status.json").read_text())

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.journal if e["event"] == name]

    def losses(self) -> dict[int, float]:
        """step → loss of the applied step, as the final model saw it (later attempts win)."""
        out: dict[int, float] = {}
        for line in (self.run_dir / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            if not row["skipped"]:
                out[row["step"]] = row["loss"]
        return out

    @property
    def final_eval(self) -> float:
        return float(self.events("complete")[-1]["eval_loss"])


def run_submit(tmp: Path, overrides: dict[str, Any], name: str = "run") -> RunResult:
    from orchestrator.cli import main
    cfg = deep_merge(BASE, overrides)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_dir = tmp / name
    code = main(["submit", str(path), "--run-dir", str(run_dir), "--quiet"])
    return RunResult(run_dir, code)


@pytest.fixture(scope="session")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    """One fault-free run of the base config, shared by every test that compares against it."""
    return run_submit(tmp_path_factory.mktemp("clean"), {}, "clean")



def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test in a ``tests/test_slurm_*.py`` file, or using the ``cluster`` fixture, runs in the Slurm part.

    Why: ``scripts/test.sh`` runs the tests marked ``slurm`` in their own process, one at a time, because
    they share one Slurm cluster; a new Slurm test file is in that part without having to remember the mark.
    """
    for item in items:
        if item.path.name.startswith("test_slurm_") or "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slurm)
