"""The memory tier on Slurm's in-allocation path (issue #18): the warm agents srun started replicate
their ranks' copies to a partner node's agent (a ring, as on the local backend), so a lost node's ranks
resume on a spare from the partner's copy, not from storage.

One run on the real local Slurm cluster (2 nodes + 2 spares, the tier on, storage checkpoints every 10
steps so that storage would lose several steps): the SIGKILLed agent of one node, then the killed slurmd
of another (its tasks frozen, so its replication server stops answering mid-push). After each, the
ranks restore from the partner's memory, and every step's loss equals the uninterrupted local run's. At
load the partner's replicas may lag a few steps; lag-aware retention keeps every rank's copies back to
the step the whole ring replicated, so the restore is from memory at that step (not storage). The
killed node is revived whatever happens.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunResult, run_submit
from tests.test_memtier import _assert_same_losses
from tests.slurm_faults_helpers import kill_agent_then_slurmd, killed_nodes  # noqa: F401  (fixture)
from tests.test_slurm_cluster import cluster  # noqa: F401  (fixture)
from tests.test_slurm_inalloc import INALLOC
from trainer import memstore

MEMTIER = {**INALLOC, "chaos": [],
           "checkpoint": {"every_steps": 10, "memory": {"enabled": True}},
           # generous: a false hang or a falsely lost agent on a loaded 2-core machine adds relaunches that
           # this test does not check (the node losses are found from the agents' links, not timeouts)
           "health": {**INALLOC["health"], "hang_timeout_s": 20.0, "agent_timeout_s": 8.0},
           "train": {"steps": 60, "step_sleep_s": 0.05}}


@pytest.mark.slurm
def test_lost_node_resumes_from_partner_memory_on_slurm(cluster: None, tmp_path: Path,
                                                        killed_nodes: dict[str, Any], clean_run: RunResult) -> None:
    killed = killed_nodes  # the last node's agent once step 15 is passed, then the new last's slurmd after 35
    t = threading.Thread(target=kill_agent_then_slurmd, args=(tmp_path / "run", killed, (1, 15), (2, 35)),
                         daemon=True)
    t.start()
    r = run_submit(tmp_path, MEMTIER)
    t.join(timeout=5)
    assert r.code == 0 and r.status["state"] == "COMPLETED", r.status.get("reason")
    launches = r.events("launch")
    assert len({x["job_id"] for x in launches}) == 1, [(x["attempt"], x["job_id"]) for x in launches]
    lost = [f for f in r.events("fault") if f["kind"] == "node_failure"]
    assert [f["node"] for f in lost] == [killed["agent_node"], killed["slurmd_node"]], lost
    # Each restore: from the partner's memory. Under load its replicas may lag (seen in CI at load ~12);
    # the copies kept back to the ring's replicated step (at most MAX_KEEP) still share one with it.
    for f in lost:
        load = next(e for e in r.events("checkpoint_loaded") if e["seq"] > f["seq"])
        assert load["tier"] == "memory" and f["step"] - memstore.MAX_KEEP < load["step"] <= f["step"], (f, load)
        moved = next(x for x in launches if x["seq"] > f["seq"])
        assert f["node"] not in moved["nodes"], moved  # a spare took its ranks
    _assert_same_losses(r, clean_run)
