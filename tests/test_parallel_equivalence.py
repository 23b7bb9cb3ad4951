"""Every hybrid layout reproduces the single-process run (real gloo processes on CPU).

Layouts of one world size share one process group, forked from this process (importing torch in 8
fresh processes on 2 cores costs seconds): a fixture runs all of them once per session, also when xdist
hands this module's tests to both workers (``shared_json``), and the tests then check each result.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from benchmarks.layout_harness import batches, make_cfg, reference_losses, spawn
from tests.conftest import shared_json

TOL = 1e-4
STEPS = 5

WORLD2: dict[str, dict[str, Any]] = {
    "dp2-fsdp": {"dp": 2}, "dp2-replicate": {"dp": 2, "dp_mode": "replicate"},
    "tp2": {"tp": 2}, "tp2-sp": {"tp": 2, "sp": True}, "tp2-ddp-as-replicate": {"tp": 2, "dp_mode": "ddp"},
    "pp2-1f1b": {"pp": 2}, "pp2-gpipe": {"pp": 2, "schedule": "gpipe"},
    "pp2-interleaved": {"pp": 2, "schedule": "interleaved_1f1b"},
}
WORLD4: dict[str, dict[str, Any]] = {
    "dp2-tp2-sp": {"dp": 2, "tp": 2, "sp": True}, "dp2-tp2-replicate": {"dp": 2, "tp": 2, "dp_mode": "replicate"},
    "dp2-pp2-gpipe": {"dp": 2, "pp": 2, "schedule": "gpipe"},
    "tp2-pp2-sp-1f1b": {"tp": 2, "pp": 2, "sp": True},
    "tp2-pp2-interleaved": {"tp": 2, "pp": 2, "schedule": "interleaved_1f1b"},
}
WORLD8: dict[str, dict[str, Any]] = {
    "dp2-tp2-pp2-sp-1f1b": {"dp": 2, "tp": 2, "pp": 2, "sp": True},
    "dp2-tp2-pp2-interleaved": {"dp": 2, "tp": 2, "pp": 2, "schedule": "interleaved_1f1b"},
}


@pytest.fixture(scope="module")
def reference() -> list[float]:
    cfg = make_cfg()
    return reference_losses(cfg, batches(cfg, STEPS))


def _run(world: int, layouts: dict[str, dict[str, Any]], tmp: Any,
         extra: list[dict[str, Any]] | None = None) -> dict[str, list[dict[str, Any]]]:
    jobs = [{"name": n, "cfg": c, "steps": STEPS, "eval": True} for n, c in layouts.items()] + (extra or [])
    res = spawn(world, jobs, str(tmp), start_method="fork")
    return {job["name"]: [res[r][i] for r in range(world)] for i, job in enumerate(jobs)}


EXTRA2 = [
    {"name": "nan-on-tp-rank1", "cfg": {"tp": 2, "sp": True}, "steps": 3, "poison": [1, 1]},
    {"name": "bf16-tp2", "cfg": {"tp": 2, "precision": "bf16"}, "steps": STEPS},
    {"name": "fp16-tp2", "cfg": {"tp": 2, "precision": "fp16"}, "steps": STEPS},
    {"name": "fp16-pp2", "cfg": {"pp": 2, "precision": "fp16"}, "steps": STEPS},
]


@pytest.fixture(scope="module")
def world2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    return shared_json(tmp_path_factory, "equivalence-world2", lambda tmp: _run(2, WORLD2, tmp, EXTRA2))


@pytest.fixture(scope="module")
def world4(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    return shared_json(tmp_path_factory, "equivalence-world4", lambda tmp: _run(4, WORLD4, tmp))


@pytest.fixture(scope="module")
def world8(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    return shared_json(tmp_path_factory, "equivalence-world8", lambda tmp: _run(8, WORLD8, tmp))


def _check(ranks: list[dict[str, Any]], reference: list[float]) -> None:
    for r, rec in enumerate(ranks):
        assert not any(rec["bad"]), f"rank {r} saw a bad step"
        for step, (got, want) in enumerate(zip(rec["loss"], reference[:STEPS])):
            assert abs(got - want) < TOL, f"rank {r} step {step}: {got} != {want}"
        assert abs(rec["eval"] - reference[STEPS]) < TOL, f"rank {r} eval {rec['eval']} != {reference[STEPS]}"
        assert rec["grad_norm"] == ranks[0]["grad_norm"], "every rank must see the same grad norm"
        assert rec["dtypes"] == ["float32"]


@pytest.mark.parametrize("name", list(WORLD2))
def test_two_process_layouts_match_single_process(world2: Any, reference: list[float], name: str) -> None:
    _check(world2[name], reference)


@pytest.mark.parametrize("name", list(WORLD4))
def test_four_process_layouts_match_single_process(world4: Any, reference: list[float], name: str) -> None:
    _check(world4[name], reference)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(WORLD8))
def test_eight_process_layouts_match_single_process(world8: Any, reference: list[float], name: str) -> None:
    _check(world8[name], reference)


def test_nan_on_one_tp_rank_is_seen_by_all(world2: Any) -> None:
    """Only rank 1's gradient shards are poisoned at step 1; both ranks' grad norms are NaN."""
    for rec in world2["nan-on-tp-rank1"]:
        assert rec["bad"] == [False, True, False]
        assert math.isnan(rec["grad_norm"][1]) and math.isfinite(rec["grad_norm"][2])


def test_reduced_precision_keeps_fp32_masters(world2: Any, reference: list[float]) -> None:
    for name in ("bf16-tp2", "fp16-tp2", "fp16-pp2"):
        for rec in world2[name]:
            assert rec["dtypes"] == ["float32"], name
            assert all(math.isfinite(x) for x in rec["loss"]), name
            assert abs(rec["loss"][-1] - reference[STEPS - 1]) < 0.05, name
