"""The local Slurm cluster's nodes are hosts: each ``slurmd -N nodeN`` in its own network namespace on a
bridge (``slurm/local-cluster.sh`` as root with iproute2).

A run's telemetry crosses from the nodes' own addresses to the supervisor, MASTER_ADDR is the first
node's address, and datagrams forged from a compute node are dropped and counted; a partitioned node
(link down, its ranks alive) is excluded, the run completes on the spare, and the cut-off ranks,
healed while the run goes on, commit nothing; a slow link is named by the collective probe that the
warm agents place on their nodes (the pre-flight's runs across the same links). Which clusters allow the network faults is decided by
what the script writes next to slurm.conf (unit tests at the end, no cluster needed).

They skip when the cluster in use is not namespaced (ORCH_SLURM_NETNS=0, no root); scripts/test.sh sets
ORCH_REQUIRE_NETNS_SLURM=1 where the cluster is namespaced (or on the ``ORCH_SLURM_INSTANCE=ns`` instance it
starts when the shared one is plain): there a skip is a failure.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config_load import ConfigError, load_config_data
from slurm.local_cluster import MARKER_NAME, LocalCluster, local_cluster
from tests.conftest import deep_merge, run_submit
from tests.test_fencing import applied_once
from tests.test_slurm_backend import launches
from tests.test_slurm_cluster import SCRIPT, cluster  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]
RUN = {"cluster": {"backend": "slurm", "nodes": 2, "spare_nodes": 1,
                   "slurm": {"partition": "main", "poll_interval_s": 0.5}},
       "train": {"steps": 24}, "health": {"startup_timeout_s": 240, "agent_timeout_s": 2.0}}


@pytest.fixture(scope="module")
def ns_cluster(cluster: None) -> LocalCluster:
    lc = local_cluster()
    if lc is None or not lc.netns:
        why = "not the local cluster" if lc is None else f"cluster {lc.cluster} is plain (one loopback)"
        if os.environ.get("ORCH_REQUIRE_NETNS_SLURM") == "1":  # scripts/test.sh's namespaced part
            pytest.fail(f"the Slurm cluster in use must be the namespaced local cluster: {why}")
        pytest.skip(f"the Slurm cluster in use is not namespaced: {why}")
    return lc


def node_addrs(lc: LocalCluster) -> dict[str, str]:
    return {n: v["addr"] for n, v in lc.nodes.items()}


def forge_from_node(lc: LocalCluster, node: str, run_dir: Path) -> dict[str, int]:
    """tests.test_telemetry_forgery's forger, run inside ``node``'s namespace: another user on a compute
    node sending a fake Xid 79 exit, NaN votes and a rollback, unsigned and with a wrong key."""
    code = ("import json, sys; from tests.test_telemetry_forgery import forge; sent = {'no_mac': 0, "
            "'bad_mac': 0, 'replay': 0}; forge(__import__('pathlib').Path(sys.argv[1]), sent); print(json.dumps(sent))")
    out = subprocess.run(["nsenter", f"--net=/run/netns/{lc.nodes[node]['netns']}", sys.executable, "-c", code,
                          str(run_dir)], capture_output=True, text=True, timeout=400, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-2000:]
    return dict(json.loads(out.stdout))


@pytest.mark.slurm
def test_run_crosses_hosts_and_forgeries_from_a_node_are_dropped(ns_cluster: LocalCluster,
                                                                  tmp_path: Path) -> None:
    addrs = node_addrs(ns_cluster)
    sent: dict[str, int] = {}
    forger = threading.Thread(target=lambda: sent.update(forge_from_node(ns_cluster, "node4", tmp_path / "run")),
                              daemon=True)
    forger.start()
    r = run_submit(tmp_path, deep_merge(RUN, {"cluster": {"spare_nodes": 0, "slurm": {"recovery": "resubmit"}}}))
    forger.join(timeout=60)
    assert r.code == 0, r.status.get("reason")
    (launch,) = r.events("launch")
    nodes = launch["nodes"]
    # every rank's datagrams came from its own node's address on the bridge, none from a loopback
    sources = r.status["telemetry_sources"]
    assert {n: sources.get(n) for n in nodes} == {n: addrs[n] for n in nodes}, sources
    assert not any(ipaddress.ip_address(a).is_loopback for a in sources.values()), sources
    # MASTER_ADDR: the first node's own address, as the first node's tasks published it
    published = r.run_dir / "slurm" / "attempt-0" / "exit" / f"addr-{nodes[0]}"
    assert published.read_text().strip() == addrs[nodes[0]]
    # the forged datagrams were dropped and counted, and changed nothing
    assert sent and sent["no_mac"] > 0, sent
    by = r.status["telemetry_rejected_by"]
    assert by["no_mac"] == sent["no_mac"] and by["bad_mac"] == sent["bad_mac"], (by, sent)
    assert not r.status["faults"] and not r.events("node_excluded")


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (a node agent's forked ranks)."""
    out = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text() if proc.name.isdigit() else ""
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(proc.name))
    return out


def _excluded(run_dir: Path) -> dict[str, Any] | None:
    journal = run_dir / "journal.jsonl"
    for line in journal.read_text().splitlines() if journal.exists() else []:
        rec = json.loads(line)
        if rec["event"] == "node_excluded":
            return rec
    return None


def watch_partition(run_dir: Path, seen: dict[str, Any]) -> None:
    """When the partitioned node is excluded: record which of its ranks are still alive, then heal its
    link while the run goes on (the cut-off ranks wake up behind the fence)."""
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and (ex := _excluded(run_dir)) is None:
        time.sleep(0.1)
    if ex is None:
        return
    seen["node"] = ex["node"]
    agent = launches(run_dir)[0]["agent_pids"][ex["node"]]
    seen["alive"] = _children(int(agent))
    subprocess.run(["bash", str(SCRIPT), "heal-node", ex["node"]], capture_output=True, timeout=60)
    seen["healed_t"] = time.time()


@pytest.fixture
def healed(ns_cluster: LocalCluster) -> Any:
    """Whatever the test did, every node's link is up and every node idle afterwards."""
    yield
    for node in ns_cluster.nodes:
        subprocess.run(["bash", str(SCRIPT), "heal-node", node], capture_output=True, timeout=60)
    from tests.test_slurm_cluster import cluster_settles
    if not cluster_settles(90.0):
        for node in ns_cluster.nodes:
            subprocess.run(["bash", str(SCRIPT), "revive-node", node], capture_output=True, timeout=180)


@pytest.mark.slurm
def test_partitioned_node_is_excluded_and_its_running_ranks_commit_nothing(ns_cluster: LocalCluster,
                                                                           tmp_path: Path, healed: Any) -> None:
    seen: dict[str, Any] = {}
    watcher = threading.Thread(target=watch_partition, args=(tmp_path / "run", seen), daemon=True)
    watcher.start()
    r = run_submit(tmp_path, deep_merge(RUN, {
        "train": {"steps": 30, "step_sleep_s": 0.1}, "checkpoint": {"every_steps": 5},
        "chaos": [{"fault": "partition", "step": 12, "node": 1, "steps": 100_000}]}))
    watcher.join(timeout=60)
    assert r.code == 0, r.status.get("reason")
    first = launches(r.run_dir)[0]
    cut = first["nodes"][1]
    assert (r.run_dir / "chaos" / "fired-0").exists()
    assert [e["node"] for e in r.events("node_excluded")] == [cut], r.events("node_excluded")
    assert any(f["kind"] == "node_failure" and f["node"] == cut for f in r.status["faults"]), r.status["faults"]
    assert cut not in r.events("launch")[-1]["nodes"]
    # the cut-off ranks (its agent's children) were still running when it was excluded (not a crash) ...
    assert seen.get("node") == cut and seen.get("alive"), seen
    # ... and, healed while the run went on, committed nothing: no checkpoint of epoch 0 after its fence,
    # every checkpoint loaded was accepted at a fence, every step applied once
    ckpts = r.run_dir / "checkpoints"
    assert not [p.name for p in ckpts.iterdir() if p.name.startswith("stale-")], sorted(os.listdir(ckpts))
    fences = {f["epoch"]: f for f in r.events("fence")}
    for loaded in r.events("checkpoint_loaded"):
        if loaded.get("tier", "storage") == "storage" and int(loaded["step"]) > 0:
            name = f"step_{int(loaded['step']):08d}"
            assert any(name in f["accepted"] for e, f in fences.items() if e > 0), (loaded, fences)
    applied_once(r)


@pytest.mark.slurm
def test_slow_link_is_named_by_the_probe_the_agents_place(ns_cluster: LocalCluster, tmp_path: Path,
                                                           healed: Any) -> None:
    """A node's link rate-limited (tbf) on the in-allocation path: every rank slows alike, the supervisor
    sees compute unchanged and has the warm agents start the pairwise probe on their nodes (the spare's
    agent as the third node), which names the slow link's node. The pre-flight's collective probe ran
    across the same links first."""
    r = run_submit(tmp_path, deep_merge(RUN, {
        "cluster": {"ranks_per_node": 1}, "train": {"steps": 90, "global_batch": 4, "step_sleep_s": 0.1},
        "checkpoint": {"every_steps": 80},
        "health": {"probes": ["node", "collective"], "preflight": True, "hang_timeout_s": 20.0},
        "chaos": [{"fault": "slow_link", "step": 15, "node": 1, "steps": 70, "rate_kbit": 2000}]}))
    assert r.code == 0, r.status.get("reason")
    nodes = r.events("launch")[0]["nodes"]
    # the pre-flight's probe (the attempt's 2 nodes), then the background one (with the spare): every
    # rank started by its node's agent, met the others through the run directory, and ended clean
    pre, background = sorted((r.run_dir / "probes").iterdir())
    for probe, world in ((pre, 2), (background, 3)):
        assert [(probe / f"rank{k}.exit").read_text() for k in range(world)] == ["0"] * world, probe
        assert (probe / "result.json").exists() and not (probe / f"rank{world}.exit").exists()
    assert r.events("comm_slowdown"), [e["event"] for e in r.journal]
    verdicts = r.events("link_probe")
    assert verdicts and verdicts[0]["slow_nodes"] == [nodes[1]], (verdicts, nodes)
    found = [f for f in r.status["faults"] if f["kind"] == "slow_link"]
    assert found and found[0]["node"] == nodes[1] and found[0]["action"] == "alert", r.status["faults"]
    assert not r.events("node_excluded")  # an alert: the run goes on


# ---- which clusters allow partition and slow_link (no cluster needed) --------------------------------
def _conf(tmp_path: Path, cluster_name: str, marker: dict[str, Any] | None) -> Path:
    conf = tmp_path / "slurm.conf"
    conf.write_text(f"# test\nClusterName={cluster_name}\nSlurmctldHost=login1\n")
    if marker is not None:
        (tmp_path / MARKER_NAME).write_text(json.dumps(marker))
    return conf


@pytest.mark.parametrize("name,marker,refused", [
    ("prod", None, "is not that cluster's"),  # a production cluster: no marker
    ("prod", {"cluster": "orch", "netns": True, "nodes": {}}, "is not that cluster's"),  # a stray marker
    ("orch", {"cluster": "orch", "netns": False, "nodes": {}}, "runs every slurmd on one loopback"),
    ("orch", {"cluster": "orch", "netns": True, "nodes": {}}, None),
])
def test_network_faults_allowed_only_on_the_namespaced_local_slurm_cluster(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, marker: dict[str, Any] | None,
        refused: str | None) -> None:
    monkeypatch.setenv("SLURM_CONF", str(_conf(tmp_path, name, marker)))
    data = {"cluster": {"backend": "slurm"}, "chaos": [{"fault": "slow_link", "step": 3, "node": 1}]}
    if refused is None:
        load_config_data(data)
        return
    with pytest.raises(ConfigError, match=f"chaos.0.fault: slow_link .*{refused}"):
        load_config_data(data)


# ---- a task's own address: from the routing table, never the hostname (no cluster needed) -----------
def test_a_task_on_the_node_replaces_a_loopback_nodeaddr_by_its_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian resolves a host's own name to 127.0.1.1: the NodeAddr name, looked up on that node, is
    loopback; the source address of the route toward the supervisor is what the others reach."""
    from orchestrator.telemetry_server import cluster_address
    from slurm import job
    from slurm.node_addr import route_source
    toward = cluster_address()
    if ipaddress.ip_address(toward).is_loopback:
        pytest.skip("this host has no address beyond loopback")
    monkeypatch.setattr(job, "controller_node_addr", lambda node: "localhost")  # a name → loopback here
    monkeypatch.setenv("SLURMD_NODENAME", "node1")
    got = job.known_address("node1", toward)
    assert got == route_source(toward) and not ipaddress.ip_address(got).is_loopback
    assert job.known_address("node2", toward) is None  # another node's: only that node can tell
    monkeypatch.setattr(job, "controller_node_addr", lambda node: "127.0.0.1")  # the plain local cluster
    assert job.known_address("node2", toward) == "127.0.0.1"


def test_inside_a_node_gloo_uses_the_link_toward_the_supervisor(tmp_path: Path) -> None:
    from orchestrator import netns
    if netns.unavailable_reason() is not None:
        pytest.skip(f"namespaces unavailable: {netns.unavailable_reason()}")
    net = netns.NodeNetwork(["n0"])
    net.create()
    try:
        code = "import json, sys; from slurm.node_addr import link_env; print(json.dumps(link_env(sys.argv[1])))"
        out = subprocess.run([*net.exec_argv("n0"), sys.executable, "-c", code, net.bridge_addr],
                             capture_output=True, text=True, timeout=60, cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
        assert out.returncode == 0, out.stderr
        env = json.loads(out.stdout)
        assert env == {"ORCH_NODE_ADDR": net.addr("n0"), "GLOO_SOCKET_IFNAME": netns.NODE_IF,
                       "NCCL_SOCKET_IFNAME": netns.NODE_IF}, env
    finally:
        net.close()
