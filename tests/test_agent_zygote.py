"""The local cluster's agents fork from one warm zygote (orchestrator.launcher.agent_zygote): each one is
still its own node: its own session and process, in its own network namespace where nodes are hosts,
answering on its own pipes; its exit code reaches the launcher through the zygote; a killed agent is a
dead node. Checked on the real launcher, without a training run."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.launcher.local.launcher import LocalLauncher
from orchestrator.launcher.local.warm_agents import AgentProc
from tests.conftest import BASE


def _replies(launcher: LocalLauncher, node: str, want: str, timeout_s: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for r in launcher.agents[node].read():
            if r.get("ev") == want:
                return r
        time.sleep(0.02)
    raise AssertionError(f"{node}: no {want!r} within {timeout_s}s")


def test_agents_fork_from_one_warm_up_and_stay_separate_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORCH_LOCAL_AGENT_START", raising=False)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(BASE))
    launcher = LocalLauncher(nodes=2, spare_nodes=1, run_dir=tmp_path)
    try:
        launcher._ensure_agents(tmp_path)
        agents = launcher.agents
        assert sorted(agents) == ["node0", "node1", "node2"]
        assert all(isinstance(a.proc, AgentProc) for a in agents.values())  # not three cold starts
        pids = {n: a.proc.pid for n, a in agents.items()}
        ready = {n: _replies(launcher, n, "ready") for n in agents}
        assert {n: r["pid"] for n, r in ready.items()} == pids  # each answers on its own pipe
        assert all(os.getsid(p) == p for p in pids.values())  # own session: a node kill takes its ranks only
        zygote = agents["node0"].proc.zygote.proc.pid  # type: ignore[union-attr]
        assert all(int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1]) == zygote
                   for p in pids.values())
        net = launcher.net
        if net is not None:  # nodes are hosts: each agent in its node's namespace, none in ours
            for n, p in pids.items():
                assert os.stat(f"/proc/{p}/ns/net").st_ino == os.stat(net.ns_path(n)).st_ino, n
            assert os.stat(f"/proc/{pids['node0']}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
        assert (tmp_path / "logs" / "agent-zygote.log").exists()
        agents["node1"].proc.kill()  # a node failure: the launcher sees it exit, with the signal's code
        deadline = time.monotonic() + 30
        while agents["node1"].proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert agents["node1"].proc.poll() == -9
        assert agents["node0"].proc.poll() is None and agents["node2"].proc.poll() is None
        launcher._ensure_agents(tmp_path)  # a replacement starts cold, as a fresh host would
        assert not isinstance(launcher.agents["node1"].proc, AgentProc)
        assert launcher.agents["node0"].proc.pid == pids["node0"]
        procs = [a.proc for a in launcher.agents.values()]
    finally:
        launcher.close()
    assert all(p.poll() is not None for p in procs)  # close() waited for every agent's exit report

