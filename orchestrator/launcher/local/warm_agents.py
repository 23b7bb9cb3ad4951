"""Starting the local cluster's node agents from one warm zygote (:mod:`orchestrator.launcher.agent_zygote`).

The launcher keeps the same handle on each agent as for one it started itself (``AgentProc`` answers
what ``subprocess.Popen`` did: pid, stdin, stdout, poll, kill, wait), so nothing downstream knows how the
agent was born. An agent is the zygote's child, not ours: its exit code comes from the zygote's report.
``ORCH_LOCAL_AGENT_START=exec`` turns this off (one cold agent per node, as before).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from orchestrator.launcher.agent_zygote import AgentSlot
from spec.layout import agent_log_name

START_ENV = "ORCH_LOCAL_AGENT_START"  # "zygote" (default) | "exec"


def wanted(count: int) -> bool:
    return count > 1 and os.environ.get(START_ENV, "zygote") != "exec"


class Zygote:
    """The warm parent of the agents: its reports, read without blocking."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.buf = b""
        self.pids: dict[str, int] = {}
        self.exits: dict[int, int] = {}
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)

    def pump(self) -> None:
        assert self.proc.stdout is not None
        while True:
            try:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
            except BlockingIOError:
                return
            if not chunk:
                return
            self.buf += chunk
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                word, a, b = (line.decode(errors="replace").split() + ["", "", ""])[:3]
                if word == "spawned" and b.isdigit():
                    self.pids[a] = int(b)
                elif word == "exit" and a.isdigit():
                    self.exits[int(a)] = int(b)

    def wait_spawned(self, nodes: list[str], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.pump()
            if all(n in self.pids for n in nodes):
                return True
            if self.proc.poll() is not None:
                self.pump()
                return all(n in self.pids for n in nodes)
            time.sleep(0.02)
        return False


class AgentProc:
    """The Popen subset the launcher uses, for an agent the zygote forked."""

    def __init__(self, zygote: Zygote, node: str, stdin: IO[bytes], stdout: IO[bytes]) -> None:
        self.zygote, self.pid, self.stdin, self.stdout = zygote, zygote.pids[node], stdin, stdout
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.zygote.pump()
            if self.pid in self.zygote.exits:
                self.returncode = self.zygote.exits[self.pid]
            elif self.zygote.proc.poll() is not None and not os.path.exists(f"/proc/{self.pid}"):
                self.returncode = -9  # the zygote died first; whoever reaped the agent kept its code
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, 9)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"agent {self.pid}", timeout or 0.0)
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode


def start(nodes: list[str], run_dir: Path, log_dir: Path, ns_path: dict[str, str], mem_ports: dict[str, int],
          timeout_s: float = 600.0) -> dict[str, AgentProc] | None:
    """Fork every node's agent from one warm-up; None when that failed (the caller starts them cold).
    Blocks until the agents exist (the zygote's warm-up: what each cold agent would have spent)."""
    slots, keep, close = [], {}, []
    for node in nodes:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err = os.open(log_dir / agent_log_name(node), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        slots.append(AgentSlot(node, in_r, out_w, err, ns_path.get(node, ""), mem_ports[node]))
        keep[node] = (os.fdopen(in_w, "wb"), os.fdopen(out_r, "rb", buffering=0))
        close += [in_r, out_w, err]
    log = open(log_dir / "agent-zygote.log", "ab")
    try:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.launcher.agent_zygote", str(run_dir),
                                 *(s.encode() for s in slots)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=log, pass_fds=close, start_new_session=True)
    finally:
        log.close()
        for fd in close:
            os.close(fd)
    zygote = Zygote(proc)
    if not zygote.wait_spawned(nodes, timeout_s):
        _discard(zygote, keep)
        return None
    out: dict[str, AgentProc] = {}
    for node, (stdin, stdout) in keep.items():
        os.set_blocking(stdout.fileno(), False)
        out[node] = AgentProc(zygote, node, stdin, stdout)
    return out


def _discard(zygote: Zygote, keep: dict[str, Any]) -> None:
    for pid in zygote.pids.values():
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    if zygote.proc.poll() is None:
        zygote.proc.kill()
    zygote.proc.wait()
    for stdin, stdout in keep.values():
        stdin.close()
        stdout.close()
