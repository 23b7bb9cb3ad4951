"""The local cluster's nodes are hosts: one network namespace per node on a bridge (needs root, iproute2).

A run completes with telemetry crossing from the nodes to the bridge address and MASTER_ADDR on node 0's
own address; a partitioned node (link down, processes alive) goes silent, is excluded and the run
completes on the spare; a slow link (tbf) slows the steps it covers; what a crashed run left behind is
removed by name; Slurm refuses the network faults.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import netns
from orchestrator.config_load import ConfigError, load_config_data
from tests.conftest import run_submit

needs_netns = pytest.mark.skipif(netns.unavailable_reason() is not None,
                                 reason=f"namespaced nodes unavailable: {netns.unavailable_reason()}")


def _mine() -> list[str]:
    """Namespaces this test process owns (other runs on the machine have their own pid in the name)."""
    tag = f"{netns.NS_PREFIX}{os.getpid():x}x"
    return [n for n in netns.ip("netns", "list", check=False).stdout.split() if n.startswith(tag)]


@needs_netns
def test_namespaced_run_completes_with_cross_host_addresses(tmp_path: Path) -> None:
    res = run_submit(tmp_path, {"train": {"steps": 20}})
    assert res.code == 0, res.status["reason"]
    launch = res.events("launch")[0]
    tel_host = ipaddress.ip_address(launch["telemetry"].rpartition(":")[0])
    master = ipaddress.ip_address(launch["master_addr"])
    assert tel_host in netns.SUPERNET and master in netns.SUPERNET and not master.is_loopback
    assert int(master) == int(tel_host) + 1  # node 0 is the first address after the bridge's
    assert res.status["telemetry_rejected"] == 0
    assert _mine() == []  # the launcher removed its namespaces


@needs_netns
def test_partitioned_node_is_excluded_and_run_completes_on_spare(tmp_path: Path) -> None:
    res = run_submit(tmp_path, {"train": {"steps": 30},
                                "chaos": [{"fault": "partition", "step": 12, "node": 1, "steps": 100_000}]})
    assert res.code == 0, res.status["reason"]
    faults = res.events("fault")
    assert [f["kind"] for f in faults] == ["node_failure"] and faults[0]["node"] == "node1"
    assert "heartbeat" in faults[0]["evidence"]["detail"]
    assert [e["node"] for e in res.events("node_excluded")] == ["node1"]
    assert res.events("launch")[-1]["nodes"] == ["node0", "node2"]
    assert _mine() == []


@needs_netns
def test_a_short_partition_is_ridden_out_without_a_relaunch(tmp_path: Path) -> None:
    """A blip of about 3 steps' time: TCP retransmits carry the collective over it, no rank goes silent
    for long, nothing is excluded or relaunched."""
    res = run_submit(tmp_path, {"train": {"steps": 24}, "health": {"hang_timeout_s": 10.0},  # slack for load
                                "chaos": [{"fault": "partition", "step": 12, "node": 1, "steps": 3}]})
    assert res.code == 0, res.status["reason"]
    assert (res.run_dir / "chaos" / "fired-0").exists()
    assert not res.events("fault") and not res.events("node_excluded") and len(res.events("launch")) == 1


@needs_netns
def test_slow_link_slows_the_steps_it_covers(tmp_path: Path) -> None:
    res = run_submit(tmp_path, {"train": {"steps": 24},
                                "chaos": [{"fault": "slow_link", "step": 12, "node": 1, "steps": 5,
                                           "rate_kbit": 8000}]})  # clear of the checkpoints at 10, 20
    assert res.code == 0, res.status["reason"]
    assert (res.run_dir / "chaos" / "fired-0").exists()
    times = {}
    for line in (res.run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        times[row["step"]] = row["step_time"]
    assert not res.events("fault")  # slower, not hung: tbf delays packets, it does not lose the run
    slow = sorted(times[s] for s in range(13, 17))
    fast = sorted(times[s] for s in list(range(2, 10)) + list(range(18, 24)))
    # the tbf adds wall-clock time to each step's traffic (~0.18 s here); a loaded machine stretches the
    # other steps too, so a ratio alone is load-sensitive (1.7x in one CI run at load ~15)
    slow_med, fast_med = slow[len(slow) // 2], fast[len(fast) // 2]
    assert slow_med - fast_med > 0.08 and slow_med > 1.3 * fast_med, (slow, fast)


@needs_netns
def test_stale_namespaces_of_a_dead_owner_are_removed() -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)
    net = netns.NodeNetwork(["node0", "node1"], token=f"{pid:x}x0")
    net.create()
    try:
        removed = netns.cleanup_stale()
        assert net.ns("node0") in removed and net.bridge in removed
        assert net.ns("node0") not in netns.ip("netns", "list").stdout
    finally:
        net.close()


def test_network_faults_are_refused_on_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "slurm.conf").write_text("ClusterName=prod\n")  # a production cluster's
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    with pytest.raises(ConfigError, match="chaos.0.fault: partition would cut"):
        load_config_data({"cluster": {"backend": "slurm"}, "chaos": [{"fault": "partition", "step": 3, "node": 1}]})


def test_without_namespaces_nodes_are_plain_processes_and_it_is_said_once(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.launcher.local import launcher as local
    monkeypatch.setenv("ORCH_LOCAL_NETNS", "0")
    monkeypatch.setattr(local, "_said_plain", False)
    first, second = local.LocalLauncher(2, 0), local.LocalLauncher(2, 0)
    assert first.cluster_address() is None and second.cluster_address() is None
    assert capsys.readouterr().err.count("plain processes on one loopback (ORCH_LOCAL_NETNS=0)") == 1
    first.close()
    second.close()
