"""The burn-in on Slurm: a lemon node the run cannot do without is re-admitted only after the known-answer
compute check ran on that node itself (through srun, like the node probe), on the real local cluster.
Only the launcher's node pool is faked (the run ends at its first launch: the node choice is under test).

Run under the shared cluster's lock: ``flock /tmp/slurm-cluster.lock pytest tests/test_replay_slurm.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from health.detectors.lemon import LemonNodeStore
from health.probes.burn_in import KNOWN_CHECKSUM
from tests.test_replay_lemons import first_launch
from tests.test_slurm_cluster import cluster  # noqa: F401  (fixture)

pytestmark = pytest.mark.slurm

SLURM = {"cluster": {"backend": "slurm", "slurm": {"partition": "main"}}}


def test_lemon_is_readmitted_only_after_burn_in_on_the_node(cluster: None, tmp_path: Path) -> None:
    store = LemonNodeStore(tmp_path / "nodes.db")
    store.record_hardware("node3", "sdc", 1.0, "replay: the bad step reproduced only here")
    nodes, journal = first_launch(tmp_path, ["node2", "node3"], spares=0, extra=SLURM)
    (burn,) = [r for r in journal if r["event"] == "burn_in"]
    assert (burn["node"], burn["ran_on"], burn["verdict"]) == ("node3", "node3", "ok"), burn  # on node3 itself
    assert burn["evidence"]["checksum"] == KNOWN_CHECKSUM
    assert [r["node"] for r in journal if r["event"] == "node_readmitted"] == ["node3"]
    assert nodes == ["node2", "node3"] and store.nodes_to_exclude(2e12) == []
