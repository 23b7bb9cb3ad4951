"""The local multi-process cluster: each simulated node is a warm node-agent process, its ranks its
forked children.

Agents (spares included) start once and stay for the whole run, as real nodes do; each attempt is a
``launch`` command to the agents of the chosen nodes. An agent that dies is a lost node. Agents exit by
themselves, taking their ranks along, when the supervisor's end of their command pipe closes, so a
supervisor crash never leaves orphaned training behind (``resume`` relaunches from the checkpoint).

Under root (with iproute2) every node is a host: its agent runs in its own network namespace on a
bridge (:mod:`orchestrator.netns`), the supervisor listens on the bridge address and ``MASTER_ADDR`` is
node 0's bridge address. Otherwise the agents are plain processes on one loopback, and we say so once.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from health.detectors.agent_silence import AgentSilence, SilenceRule
from orchestrator import netns
from orchestrator.launcher.local import warm_agents
from orchestrator.launcher.base import LaunchSpec, Launcher, LauncherEvent, free_port
from spec.layout import agent_log_name, rank_map

_said_plain = False


@dataclass
class Agent:
    node: str
    proc: subprocess.Popen[bytes] | warm_agents.AgentProc
    buf: bytes = b""
    replies: list[dict[str, Any]] = field(default_factory=list)
    dead_reported: bool = False
    silence: AgentSilence = field(default_factory=lambda: AgentSilence(SilenceRule(5.0, 0.5, 0.0)))

    def silent_for(self, now: float) -> float:
        return self.silence.silent_for(now)

    def send(self, **cmd: Any) -> bool:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False

    def read(self) -> list[dict[str, Any]]:
        assert self.proc.stdout is not None
        try:
            chunk = os.read(self.proc.stdout.fileno(), 65536)
        except BlockingIOError:
            return []
        self.buf += chunk
        out = []
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        self.silence.heard(time.monotonic(), out)  # from its "ready" on
        return out


class LocalLauncher(Launcher):
    name = "local"

    def __init__(self, nodes: int, spare_nodes: int, run_dir: Path | None = None, grace_s: float = 3.0,
                 agent_timeout_s: float = 5.0, silence: SilenceRule | None = None) -> None:
        """``silence``: when an agent's silence is a lost node (health.agent_gap_multiple); by default the
        fixed ``agent_timeout_s``."""
        self._pool = [f"node{i}" for i in range(nodes + spare_nodes)]
        self.run_dir, self.grace_s, self.agent_timeout_s = run_dir, grace_s, agent_timeout_s
        self.silence_rule = silence or SilenceRule(agent_timeout_s, agent_timeout_s / 4, 0.0)
        self.agents: dict[str, Agent] = {}
        self.current: list[str] = []
        self.finished: set[str] = set()
        self.net: netns.NodeNetwork | None = None
        self._net_decided = False
        self.mem_ports: dict[str, int] = {}  # node → its agent's memory-tier replication port
        self.mem_owner: dict[int, str] = {}
        self.mem_partner: dict[str, str] = {}
        self.mem_run_dir: Path | None = None  # whose /dev/shm directory close() removes

    def pool(self) -> list[str]:
        return list(self._pool)

    def network(self) -> netns.NodeNetwork | None:
        """The nodes' namespaces and bridge, built on first use; None when nodes are plain processes."""
        global _said_plain
        if self._net_decided:
            return self.net
        self._net_decided = True
        reason = netns.unavailable_reason()
        if reason is None:
            net = netns.NodeNetwork(self._pool)
            try:
                net.create()
                self.net = net
                atexit.register(net.close)
                return net
            except (netns.NetnsError, subprocess.TimeoutExpired, OSError) as exc:
                reason = f"building the node namespaces failed: {exc}"
        if not _said_plain:
            _said_plain = True
            print(f"local cluster: nodes are plain processes on one loopback ({reason}); run as root with "
                  "iproute2 for one network namespace per node", file=sys.stderr)
        return None

    def link_probe_runner(self, ranks_per_node: int) -> Callable[[list[str]], list[Any]] | None:
        """The pairwise collective probe with each node's ranks inside its own namespace; only namespaced
        nodes have links of their own to measure (plain processes share one loopback)."""
        net = self.net
        if net is None:
            return None

        def run(nodes: list[str]) -> list[Any]:
            from health.probes.collective import run_collective_probe
            world = len(nodes) * ranks_per_node
            env = [f"{k}={v}" for k, v in netns.node_env().items()]  # gloo on the node's own link
            return run_collective_probe(world, rank_map(nodes, ranks_per_node),
                                        timeout_s=60.0, master_addr=net.addr(nodes[0]),
                                        node_argv={n: net.exec_argv(n) + ["env", *env] for n in nodes})
        return run

    def cluster_address(self) -> str | None:
        net = self.network()
        return net.bridge_addr if net is not None else None

    def _start_agent(self, node: str, run_dir: Path) -> Agent:
        log_dir = run_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log = open(log_dir / agent_log_name(node), "ab")
        net = self.network()
        argv = [sys.executable, "-m", "orchestrator.launcher.node_agent", node, str(run_dir)]
        self.mem_ports[node] = free_port()
        self.mem_run_dir = run_dir
        env = {**os.environ, "ORCH_MEM_PORT": str(self.mem_ports[node])}
        if net is not None:  # `ip netns exec` execs the agent: the pid stays the agent's
            argv = net.exec_argv(node) + argv
            env = {**env, **netns.node_env()}
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                start_new_session=True, env=env)
        log.close()
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        return Agent(node, proc, silence=AgentSilence(self.silence_rule))

    def _ensure_agents(self, run_dir: Path) -> None:
        """Start every pool node's agent once (spares too: a spare is only useful when warm); the first
        ones fork from one shared warm-up (:mod:`warm_agents`), a later replacement starts cold."""
        missing = [n for n in self._pool if self.agents.get(n) is None or self.agents[n].proc.poll() is not None]
        if not self.agents and warm_agents.wanted(len(missing)):
            self._start_warm(missing, run_dir)
        for node in missing:
            if node not in self.agents or self.agents[node].proc.poll() is not None:
                self.agents[node] = self._start_agent(node, run_dir)

    def _start_warm(self, nodes: list[str], run_dir: Path) -> None:
        log_dir = run_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        net = self.network()
        for node in nodes:
            self.mem_ports[node] = free_port()
        self.mem_run_dir = run_dir
        ns = {n: net.ns_path(n) for n in nodes} if net is not None else {}
        procs = warm_agents.start(nodes, run_dir, log_dir, ns, self.mem_ports)
        for node, proc in (procs or {}).items():
            self.agents[node] = Agent(node, proc, silence=AgentSilence(self.silence_rule))

    def launch(self, spec: LaunchSpec) -> dict[str, Any]:
        self._ensure_agents(spec.run_dir)
        port = free_port()
        net = self.network()
        master = net.addr(spec.nodes[0]) if net is not None else "127.0.0.1"  # node 0's own address
        self.current, self.finished = list(spec.nodes), set()
        mem = self._mem_plan(spec)
        for i, node in enumerate(spec.nodes):
            agent_spec = {"node": node, "node_index": i, "attempt": spec.attempt, "world": spec.world,
                          "ranks": list(range(i * spec.ranks_per_node, (i + 1) * spec.ranks_per_node)),
                          "master_addr": master, "master_port": port, "run_dir": str(spec.run_dir),
                          "telemetry": spec.telemetry_addr, "log_dir": str(spec.log_dir),
                          # every simulated node shares this host's GPUs: disjoint host-local ranks
                          "host_rank_base": i * spec.ranks_per_node, "host_world": spec.world,
                          "mem": mem[node]}
            self.agents[node].send(cmd="launch", spec=agent_spec)
            self.agents[node].silence.working(time.monotonic())  # it forks, maybe fetches copies
        return {"pids": {n: self.agents[n].proc.pid for n in spec.nodes}, "master_port": port,
                "master_addr": master}

    def _mem_plan(self, spec: LaunchSpec) -> dict[str, dict[str, Any]]:
        """Memory tier: each node's ring partner and where moved ranks' copies are (memtier_service)."""
        from orchestrator.memtier_service import plan_launch
        net = self.net
        addr = {n: (net.addr(n) if net is not None else "127.0.0.1", p) for n, p in self.mem_ports.items()
                if self._serves(n)}
        plan, self.mem_owner, self.mem_partner = plan_launch(
            list(spec.nodes), spec.ranks_per_node, self.mem_owner, self.mem_partner, addr)  # type: ignore[arg-type]
        return plan

    def _serves(self, node: str) -> bool:
        """Whether a node's agent can hand out memory copies: running and not a lost node. Why: a spare
        fetching from a frozen (SIGSTOPped) lost node's port blocked in recv for the socket timeout, its
        heartbeats stopped, and the spare itself was declared lost."""
        a = self.agents.get(node)
        return a is not None and not a.dead_reported and a.proc.poll() is None

    def poll(self) -> list[LauncherEvent]:
        events = []
        for node, a in self.agents.items():
            for r in a.read():
                if r.get("ev") in ("ranks_done", "stopped") and node in self.current:
                    self.finished.add(node)
            now = time.monotonic()
            quiet, silent, how = a.silence.lost(now, idle=node not in self.current)
            exited = a.proc.poll() is not None
            if (exited or quiet) and not a.dead_reported:
                a.dead_reported = True
                detail = (f"node agent exited with {a.proc.returncode}" if exited else
                          f"node agent silent for {silent:.2f}s ({how})")
                if node not in self.current:  # a spare: no longer offered (pool); journaled mid-attempt
                    if self.current:
                        events.append(LauncherEvent("spare_lost", node=node, state="LOST", t=time.time(),
                                                    detail=f"idle {detail}"))
                else:
                    self.finished.add(node)
                    info: dict[str, Any] = {"evidence_source": "node agent"}
                    if not exited:  # watched for its whole limit: the supervisor need not settle on it
                        info["silence_limit_s"] = round(a.silence.limit_at(now)[0], 2)
                    events.append(LauncherEvent("node_lost", node=node, state="NODE_FAIL", t=time.time(),
                                                detail=detail, info=info))
        if self.current and self.finished >= set(self.current):
            events.append(LauncherEvent("job_ended", state="ENDED", t=time.time()))
            self.current = []
        return events

    def stop(self, grace_s: float | None = None) -> None:
        """Stop the current attempt's ranks; the agents stay warm for the next one."""
        grace = self.grace_s if grace_s is None else grace_s
        waiting = set()
        for node in self.current:
            a = self.agents[node]
            if a.dead_reported:  # a lost node (silent or gone): nothing will answer, fencing covers it
                if a.proc.poll() is None:
                    a.proc.kill()
            elif a.proc.poll() is None and a.send(cmd="stop", grace_s=grace):
                waiting.add(node)
        deadline = time.monotonic() + grace + 3.0
        while waiting and time.monotonic() < deadline:
            for node in list(waiting):
                a = self.agents[node]
                if any(r.get("ev") in ("stopped", "ranks_done") for r in a.read()) or a.proc.poll() is not None:
                    waiting.discard(node)
            time.sleep(0.01)
        for node in waiting:  # an agent that cannot stop its ranks is killed with them
            self.agents[node].proc.kill()
        self.current = []

    def close(self) -> None:
        for a in self.agents.values():
            if a.proc.poll() is None:
                a.send(cmd="exit", grace_s=1.0)
                try:
                    assert a.proc.stdin is not None
                    a.proc.stdin.close()
                except OSError:
                    pass
        for a in self.agents.values():
            try:
                a.proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                a.proc.kill()
                a.proc.wait()
        self.agents = {}
        if self.mem_run_dir is not None:  # what an agent killed mid-run left in /dev/shm
            from trainer import memstore
            memstore.wipe(memstore.BASE / memstore.run_id(self.mem_run_dir))
        if self.net is not None:
            self.net.close()
        self.net, self._net_decided = None, False
