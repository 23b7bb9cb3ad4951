"""The chaos soak: a longer local run with a seeded random schedule of 20+ faults of every kind,
including a crash while relaunching and a crash during a checkpoint save. It must complete, journal
every fault with an action, apply exactly ``train.steps`` optimizer steps, and end close to a clean run."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_submit

KINDS = (["rank_crash"] * 3 + ["hang"] * 2 + ["collective_timeout"] * 2 + ["ckpt_crash"] * 2 + ["nan"] * 4
         + ["loss_spike"] * 3 + ["disk_full", "straggler", "node_failure", "gpu_error"])
STEPS = 160


def schedule(seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    steps = sorted(rng.sample(range(12, STEPS - 5), len(KINDS)))
    kinds = list(KINDS)
    rng.shuffle(kinds)
    out: list[dict[str, Any]] = []
    for kind, step in zip(kinds, steps):
        f: dict[str, Any] = {"fault": kind, "step": step}
        if kind not in ("loss_spike",):
            f["rank"] = rng.randrange(4)
        if kind == "straggler":
            f.update(slowdown=4.0, steps=20)
        out.append(f)
    first_relaunch = next(f for f in out if f["fault"] in ("rank_crash", "hang", "collective_timeout"))
    # a second crash while relaunching: fires at the first step of attempt 1 (the resume step)
    out.append({"fault": "rank_crash", "step": first_relaunch["step"] // 10 * 10, "rank": 0, "attempt": 1})
    return out


@pytest.mark.slow
def test_chaos_soak(tmp_path: Path) -> None:
    chaos = schedule(seed=7)
    assert len(chaos) >= 20
    base = {"train": {"steps": STEPS}, "cluster": {"spare_nodes": 3},
            "policy": {"restart_budget": 20, "max_consecutive_bad": 3}}
    t0 = time.monotonic()
    clean = run_submit(tmp_path, base, "clean")
    r = run_submit(tmp_path, base | {"chaos": chaos}, "soak")
    took = time.monotonic() - t0
    assert r.code == 0, r.status["reason"]
    assert r.status["step"] == STEPS
    assert sorted(r.losses()) == list(range(STEPS))  # every step applied exactly once in the final history
    fired = sorted(p.name for p in (r.run_dir / "chaos").iterdir())
    assert len(fired) >= len(chaos) - 1, fired  # a straggler/nan landing on a skipped path may coincide
    faults, actions = r.events("fault"), r.events("action")
    assert len(faults) >= 20 and len(faults) == len(actions)
    kinds = {f["kind"] for f in faults}
    assert {"transient_fault", "rank_crash", "hang", "node_failure", "gpu_error", "disk_full",
            "straggler", "collective_timeout"} <= kinds, kinds
    # every nan and loss_spike replays clean (policy.replay on by default, 7 of max_replays 8): applied
    transients = [f for f in r.status["faults"] if f["kind"] == "transient_fault"]
    assert transients and all(f["action"] == "apply_clean" for f in transients), transients
    assert not kinds & {"nan", "loss_spike", "bad_data", "sdc"}, kinds
    assert abs(r.final_eval - clean.final_eval) < 0.1, (r.final_eval, clean.final_eval)
    print(f"soak: {len(chaos)} faults injected, {len(faults)} journaled, {r.status['restarts']} restarts, "
          f"goodput {r.status['goodput']:.3f}, {took:.0f}s (with the clean run)")
