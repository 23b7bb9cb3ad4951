"""One warm-up for every node agent of the local cluster: ``python -m orchestrator.launcher.agent_zygote
RUN_DIR NODE,IN_FD,OUT_FD,ERR_FD,NETNS,MEM_PORT ...``.

Why: an agent's warm-up (import torch and DCP, load the corpus, one forward/backward, a DCP round trip)
costs ~8 s of CPU, and the local cluster runs one agent per simulated node, spares included. All of them
run on this one host, so the zygote warms up once and forks each node's agent from the warm image; on a
two-core machine this roughly halves the CPU of a short run. Nothing about a node changes: each agent is
its own process in its own session, joins its node's network namespace (``setns``, as ``ip netns exec``
does) and talks to the launcher over its own pipes (passed here as inherited fds). Slurm nodes are
separate hosts and warm up themselves.

Protocol on stdout, one line each: ``spawned NODE PID`` per agent, then ``exit PID CODE`` as each one
ends (the zygote is their parent and reaps them). It exits when its last agent has.
"""

from __future__ import annotations

import ctypes
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class AgentSlot:
    """One agent to fork: its node, the fds that become its stdin/stdout/stderr, its namespace file."""
    node: str
    stdin: int
    stdout: int
    stderr: int
    netns: str  # path of the node's /var/run/netns file, or "" for a plain process
    mem_port: int

    def encode(self) -> str:
        return ",".join(map(str, (self.node, self.stdin, self.stdout, self.stderr, self.netns or "-", self.mem_port)))

    @classmethod
    def decode(cls, text: str) -> AgentSlot:
        node, i, o, e, ns, port = text.split(",")
        return cls(node, int(i), int(o), int(e), "" if ns == "-" else ns, int(port))

    def fds(self) -> tuple[int, int, int]:
        return self.stdin, self.stdout, self.stderr


def enter_netns(path: str) -> None:
    """Join the network namespace at ``path`` (this thread; a freshly forked child has only this one)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def become_agent(slot: AgentSlot, later: list[AgentSlot], run_dir: Path, cfg: object) -> int:
    """In the forked child: the node's session, pipes, namespace and environment, then the agent.
    ``later``: the slots not forked yet, whose fds the zygote still holds (earlier ones it closed)."""
    os.setsid()
    for fd, target in zip(slot.fds(), (0, 1, 2)):
        os.dup2(fd, target)
    for fd in {*slot.fds(), *(fd for o in later for fd in o.fds())}:
        os.close(fd)
    if slot.netns:
        from orchestrator.netns import node_env
        enter_netns(slot.netns)
        os.environ.update(node_env())  # gloo and NCCL on the node's own link, as for a cold agent
    os.environ["ORCH_MEM_PORT"] = str(slot.mem_port)
    from orchestrator.launcher.node_agent import run_agent
    return run_agent(slot.node, run_dir, cfg=cfg)


def spawn_all(run_dir: Path, slots: list[AgentSlot]) -> None:
    """Warm up, fork one agent per slot, report each pid, then reap and report each exit."""
    from orchestrator.launcher.node_agent import warm_up
    cfg = warm_up(run_dir)
    for i, slot in enumerate(slots):
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = become_agent(slot, slots[i + 1:], run_dir, cfg)
            except BaseException:
                traceback.print_exc()  # into the node's agent log
            finally:
                sys.stderr.flush()
                os._exit(code)
        for fd in slot.fds():
            os.close(fd)
        os.write(1, f"spawned {slot.node} {pid}\n".encode())
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return
        os.write(1, f"exit {pid} {os.waitstatus_to_exitcode(status)}\n".encode())


def main(argv: list[str]) -> int:
    spawn_all(Path(argv[0]), [AgentSlot.decode(a) for a in argv[1:]])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
