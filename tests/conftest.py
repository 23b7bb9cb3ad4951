"""Shared fixtures: a small run config for the local cluster, and a helper that runs ``submit``."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
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


_SHARED: dict[str, Any] = {}


def shared_json(factory: pytest.TempPathFactory, key: str, make: Callable[[Path], Any]) -> Any:
    """``make(work_dir)``'s JSON result, computed once per test session for every test that asks for
    ``key``, on whichever xdist worker: the first to ask computes it under a lock, the others wait and
    read it (and may read ``work_dir``, never write it). Why: runs and spawned process groups cost
    seconds of CPU each on a two-core CI machine, and worksteal may hand a module's tests to both workers,
    which then each made the module's fixtures: the same result twice."""
    if key not in _SHARED:
        _SHARED[key] = _make_once(factory, key, make)
    return _SHARED[key]


def _make_once(factory: pytest.TempPathFactory, key: str, make: Callable[[Path], Any]) -> Any:
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return make(factory.mktemp(key))
    root = factory.getbasetemp().parent / "shared"  # this session's, common to its workers
    root.mkdir(exist_ok=True)
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if make raises
        done = root / f"{key}.json"
        if done.exists():
            return json.loads(done.read_text())
        work = root / f"{key}-{worker}"  # never a directory a worker that crashed mid-way left behind
        work.mkdir()
        out = make(work)
        done.write_text(json.dumps(out))
        return json.loads(done.read_text())  # what the other workers get, to the last float


def shared_run(factory: pytest.TempPathFactory, key: str, overrides: dict[str, Any]) -> RunResult:
    """A run of ``BASE`` + ``overrides`` made once per test session (``shared_json``); readers must
    not write into its directory."""
    def make(work: Path) -> list[Any]:
        r = run_submit(work, overrides, key)
        return [str(r.run_dir), r.code]
    run_dir, code = shared_json(factory, f"run-{key}", make)
    return RunResult(Path(run_dir), code)


@pytest.fixture(scope="session")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    """One fault-free run of the base config, shared by every test that compares against it."""
    return shared_run(tmp_path_factory, "clean", {})



# What each heavy file costs a full CI run (seconds of setup + call under its load: the `--durations` of
# scripts/test.sh on 2026-11-30 summed per file, files with runs outside its slowest 40 estimated at ~35 s
# a run, the files shortened on 2026-12-01 scaled by their measured change). Only the order of the xdist
# part depends on it: a stale figure costs balance, not results.
FILE_SECONDS: dict[str, float] = {
    "test_local_faults.py": 520, "test_local_recovery_extra.py": 270, "test_bench_ftlauncher.py": 258,
    "test_parallel_chaos.py": 310, "test_chaos_soak.py": 216, "test_replay_local.py": 190,
    "test_memtier.py": 145, "test_local_netns.py": 130, "test_comm_straggler.py": 130,
    "test_benchmarks_smoke.py": 110, "test_parallel_equivalence.py": 100, "test_bench_gpu_step.py": 77,
    "test_prometheus_training.py": 75, "test_device.py": 70, "test_agent_cuda_fork.py": 65,
    "test_agent_heartbeat.py": 65, "test_fencing.py": 60, "test_plan_trains.py": 60, "test_parallel_reshard.py": 60,
    "test_config_fuzz.py": 45, "test_integrity.py": 40, "test_collective_timeout.py": 35,
    "test_telemetry_forgery.py": 35, "test_interval.py": 35,
}


def order_for_two_workers(items: list[pytest.Item]) -> list[pytest.Item]:
    """The heavy files split into two equal loads, each half starting with its heaviest file and ending
    with light ones; each file's tests stay together and in order (its module fixtures run once).

    Why: ``--dist worksteal`` hands the first half of the collection (by count) to one worker and the
    rest to the other, and a worker that runs dry steals from the tail of the other's queue. In file
    order a long test could start last and keep one worker busy while the other waits; this way both
    start on long tests and the steals at the end move only short ones.
    """
    files: dict[str, list[pytest.Item]] = {}
    for item in items:
        files.setdefault(str(item.path), []).append(item)
    weight = {f: FILE_SECONDS.get(Path(f).name, 0.0) for f in files}
    bins: tuple[list[str], list[str]] = ([], [])
    load = [0.0, 0.0]
    for f in sorted((f for f in files if weight[f]), key=lambda f: -weight[f]):  # longest first, to the lighter bin
        i = load.index(min(load))
        bins[i].append(f)
        load[i] += weight[f]
    first = [it for f in bins[0] for it in files[f]]
    second = [it for f in bins[1] for it in files[f]]
    for f in (f for f in files if not weight[f]):  # light files fill the first half up to the split
        (first if len(first) < len(items) // 2 else second).extend(files[f])
    return first + second


class TwoWorkerOrder:
    """Orders the tests left after ``-m``/``-k`` deselection (hence ``trylast``) for two xdist workers."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        items[:] = order_for_two_workers(items)


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        config.pluginmanager.register(TwoWorkerOrder(), "two-worker-order")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test in a ``tests/test_slurm_*.py`` file, or using the ``cluster`` fixture, runs in the Slurm part.

    Why: ``scripts/test.sh`` runs the tests marked ``slurm`` in their own process, one at a time, because
    they share one Slurm cluster; a new Slurm test file is in that part without having to remember the mark.
    """
    for item in items:
        if item.path.name.startswith("test_slurm_") or "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slurm)
