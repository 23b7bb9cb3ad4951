"""The local multi-process cluster: each simulated node is a node-agent process, its ranks its children.

Agents run in their own session so that a supervisor crash does not take the training with it
(``resume`` re-attaches by pid); killing an agent kills its ranks (a node failure).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from orchestrator.launcher.base import LaunchSpec, Launcher, LauncherEvent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalLauncher(Launcher):
    name = "local"

    def __init__(self, nodes: int, spare_nodes: int, grace_s: float = 3.0) -> None:
        self._pool = [f"node{i}" for i in range(nodes + spare_nodes)]
        self.grace_s = grace_s
        self.agents: dict[str, subprocess.Popen[bytes] | psutil.Process] = {}
        self._done: set[str] = set()
        self._stopping = False

    def pool(self) -> list[str]:
        return list(self._pool)

    def launch(self, spec: LaunchSpec) -> dict[str, Any]:
        self._stopping = False
        self._done = set()
        port = free_port()
        spec.log_dir.mkdir(parents=True, exist_ok=True)
        for i, node in enumerate(spec.nodes):
            agent_spec = {"node": node, "node_index": i, "attempt": spec.attempt, "world": spec.world,
                          "ranks": list(range(i * spec.ranks_per_node, (i + 1) * spec.ranks_per_node)),
                          "master_addr": "127.0.0.1", "master_port": port, "run_dir": str(spec.run_dir),
                          "telemetry": spec.telemetry_addr, "log_dir": str(spec.log_dir),
                          "grace_s": self.grace_s}
            log = open(spec.log_dir / f"{node}-agent.log", "ab")
            self.agents[node] = subprocess.Popen(
                [sys.executable, "-m", "orchestrator.launcher.node_agent", json.dumps(agent_spec)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            log.close()
        return {"pids": {n: p.pid for n, p in self.agents.items()}, "master_port": port}

    def attach(self, info: dict[str, Any], spec: LaunchSpec) -> bool:
        procs = {}
        for node, pid in info.get("pids", {}).items():
            try:
                p = psutil.Process(int(pid))
                if "node_agent" in " ".join(p.cmdline()):
                    procs[node] = p
            except (psutil.Error, ValueError):
                continue
        if not procs:
            return False
        self.agents = procs  # type: ignore[assignment]
        return True

    @staticmethod
    def _exit_code(p: subprocess.Popen[bytes] | psutil.Process) -> int | None:
        if isinstance(p, psutil.Process):
            try:
                return None if p.is_running() and p.status() != psutil.STATUS_ZOMBIE else 0
            except psutil.Error:
                return 0
        return p.poll()

    def poll(self) -> list[LauncherEvent]:
        events = []
        for node, p in self.agents.items():
            if node in self._done:
                continue
            code = self._exit_code(p)
            if code is None:
                continue
            self._done.add(node)
            if code != 0 and not self._stopping:
                events.append(LauncherEvent("node_lost", node=node, state="NODE_FAIL",
                                            detail=f"node agent exited with {code}", t=time.time()))
        if self.agents and len(self._done) == len(self.agents):
            events.append(LauncherEvent("job_ended", state="ENDED", t=time.time()))
            self.agents = {}
        return events

    def stop(self, grace_s: float | None = None) -> None:
        self._stopping = True
        grace = self.grace_s if grace_s is None else grace_s
        for p in self.agents.values():
            _signal_group(p.pid, signal.SIGTERM)
        deadline = time.time() + grace + 2.0
        for p in self.agents.values():
            _wait_gone(p, deadline)
            _signal_group(p.pid, signal.SIGKILL)
        self.agents = {}


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_gone(p: subprocess.Popen[bytes] | psutil.Process, deadline: float) -> None:
    while time.time() < deadline:
        if isinstance(p, subprocess.Popen):
            if p.poll() is not None:
                return
        elif not p.is_running() or p.status() == psutil.STATUS_ZOMBIE:
            return
        time.sleep(0.02)


def logs_dir(run_dir: Path, attempt: int) -> Path:
    return run_dir / "logs" / f"attempt-{attempt}"
