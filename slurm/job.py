"""What runs inside each Slurm task: set the rank's environment from Slurm's, then train.

submitit pickles a :class:`RankTask` (a module-level dataclass, so it pickles by reference) and calls it
in every task of the step. The task translates ``SLURM_*`` into the variables ``trainer.rank_main``
reads, sends the rank's output to the run directory like the local backend does, and runs the rank as
its child, the way the local node agent does: whatever way the rank ends (return, ``os._exit``, a
signal), the task sends the supervisor a ``rank_exit`` message with the exit code and the tail of the
rank's stderr (a GPU Xid there excludes the node, as on the local backend), and leaves the same facts
in an exit marker so the launcher learns them without telemetry or sacct (exit 75: checkpointed for
requeue). Signals Slurm sends the task (USR1: dump stacks, USR2: time limit) are passed to the rank.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from orchestrator.launcher.node_agent import tail  # the log tail classify_exit reads (Xid, OOM, NCCL)
from slurm.hostlist import expand
from slurm.local_cluster import local_cluster
from slurm.node_addr import (
    controller_node_addr, is_loopback, is_loopback_ip, link_env, resolve, route_source, split_host,
)
from spec.layout import rank_env, rank_log_name

PREEMPTED_EXIT = 75  # mirrors trainer.rank_main.PREEMPTED_EXIT without importing torch here


class RankFailed(RuntimeError):
    """Raised so that submitit (and sacct) record a failed task when the rank returned non-zero."""

    def __init__(self, code: int) -> None:
        super().__init__(f"rank exited with code {code}")
        self.code = code


def known_address(node: str, toward: str | None = None) -> str | None:
    """An address of ``node`` the other nodes reach, or None when this process cannot tell.

    The controller's NodeAddr, resolved here when it is a name. A name that resolves to loopback (Debian
    maps a host's own name to 127.0.1.1) is replaced, when this task runs on ``node``, by the local address
    of the route toward ``toward`` (the supervisor's advertised host). Loopback comes back only when the
    controller itself declares it (the plain local cluster: every node on this one host)."""
    raw = controller_node_addr(node)
    if raw is not None and is_loopback_ip(raw):
        return raw
    addr = resolve(raw) if raw else None
    if addr is not None and not is_loopback(addr):
        return addr
    if toward and os.environ.get("SLURMD_NODENAME") == node:
        src = route_source(toward)
        if src is not None and not is_loopback(src):
            return src
    return None


def node_address(node: str, toward: str | None = None) -> str:
    """:func:`known_address`, else the NodeAddr as given (a name the other hosts resolve themselves)."""
    return known_address(node, toward) or controller_node_addr(node) or node


def first_node_address(first: str, marker_dir: Path, toward: str, wait_s: float = 60.0) -> str:
    """MASTER_ADDR: the first node's reachable address. Tasks on the first node publish theirs (shared
    file system); a task elsewhere that cannot find it from the controller waits for that file."""
    published = Path(marker_dir) / f"addr-{first}"
    here = known_address(first, toward)
    if os.environ.get("SLURMD_NODENAME") == first and here is not None:
        published.parent.mkdir(parents=True, exist_ok=True)
        tmp = published.with_name(f".{published.name}.{os.getpid()}")
        tmp.write_text(here)
        os.replace(tmp, published)
    if here is not None:
        return here
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            return published.read_text().strip()
        except OSError:
            time.sleep(0.2)
    return node_address(first, toward)


def node_link_env(toward: str) -> dict[str, str]:
    """gloo/NCCL on the link toward the supervisor; on the namespaced local cluster, also the node's link
    that chaos partition/slow_link acts on. A GLOO_SOCKET_IFNAME the user set is kept."""
    lc = local_cluster()
    node = os.environ.get("SLURMD_NODENAME", "")
    env = link_env(toward, lc.netif(node) if lc is not None else None)
    return {k: v for k, v in env.items() if k not in os.environ or not k.endswith("_SOCKET_IFNAME")}


def exit_marker(marker_dir: Path, rank: int) -> Path:
    return marker_dir / f"exit-rank{rank}.json"


def restart_marker_dir(marker_dir: Path, restarts: int) -> Path:
    """Where the tasks of the job's ``restarts``-th run (Slurm's requeue count) leave their markers: a
    requeued job's ranks must not find the exit codes of the run that was preempted."""
    return marker_dir if restarts == 0 else marker_dir / f"restart-{restarts}"


def _restarts() -> int:
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        return 0


def read_exit_markers(marker_dir: Path) -> dict[int, dict[str, object]]:
    """rank -> its exit marker (code, signal, node, stderr tail) for every rank that has exited."""
    out: dict[int, dict[str, object]] = {}
    for p in marker_dir.glob("exit-rank*.json"):
        try:
            rec = json.loads(p.read_text())
            out[int(rec["rank"])] = rec
        except (OSError, ValueError, KeyError):
            continue
    return out


def read_exit_codes(marker_dir: Path) -> dict[int, int]:
    """rank -> exit code of every rank of the attempt that returned (not those that crashed)."""
    out: dict[int, int] = {}
    for p in marker_dir.glob("exit-rank*.json"):
        try:
            rec = json.loads(p.read_text())
            out[int(rec["rank"])] = int(rec["code"])
        except (OSError, ValueError, KeyError):
            continue
    return out


@dataclass(frozen=True)
class RankTask:
    """One attempt's rank entry; every field is chosen by the launcher, the rest comes from Slurm."""

    run_dir: str
    attempt: int
    telemetry_addr: str
    master_port: int
    log_dir: str
    marker_dir: str

    def environment(self, slurm_env: Mapping[str, str], master_addr: str) -> dict[str, str]:
        """The variables ``trainer.rank_main`` reads, derived from Slurm's for this task."""
        return {**rank_env(rank=slurm_env["SLURM_PROCID"], world=slurm_env["SLURM_NTASKS"],
                           local_rank=slurm_env["SLURM_LOCALID"], master_addr=master_addr,
                           master_port=self.master_port, run_dir=self.run_dir, attempt=self.attempt,
                           node=slurm_env.get("SLURMD_NODENAME", "node0"),
                           node_index=slurm_env.get("SLURM_NODEID", "0")),
                "ORCH_TELEMETRY_ADDR": self.telemetry_addr,
                "ORCH_TELEMETRY_KEY_FILE": os.path.join(self.run_dir, "telemetry.key")}  # a path, never the key

    def _redirect_output(self, node: str, rank: str) -> Path:
        """The rank's stdout/stderr (and faulthandler stacks) go where the supervisor looks for them."""
        log_dir = Path(self.log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / rank_log_name(node, rank)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        return log

    def __call__(self) -> int:
        first = expand(os.environ["SLURM_JOB_NODELIST"])[0]
        toward = split_host(self.telemetry_addr)
        env = self.environment(os.environ, first_node_address(first, Path(self.marker_dir), toward))
        os.environ.update({**node_link_env(toward), **env})
        rank, node = int(env["RANK"]), env["ORCH_NODE"]
        log = self._redirect_output(node, env["RANK"])
        proc = subprocess.Popen([sys.executable, "-m", "slurm.job"])  # env and fds are inherited
        for sig in (signal.SIGUSR1, signal.SIGUSR2):  # pass Slurm's signals on; never die of them here
            signal.signal(sig, lambda signum, _frame: _forward(proc, signum))
        code = proc.wait()
        self._report(rank, node, code, tail(log))
        if code not in (0, PREEMPTED_EXIT):  # 75 is a clean stop: --kill-on-bad-exit must not kill the
            raise RankFailed(code)            # peers still finishing theirs
        return code

    def _report(self, rank: int, node: str, code: int, stderr_tail: str) -> None:
        """Exit marker first (durable), then the same facts as telemetry (fast, may be lost)."""
        sig = -code if code < 0 else None
        info = {"rank": rank, "code": code, "signal": sig, "node": node, "t": time.time(),
                "stderr_tail": stderr_tail}
        marker = exit_marker(restart_marker_dir(Path(self.marker_dir), _restarts()), rank)
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(f".{marker.name}.tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, marker)
        from trainer.telemetry import Telemetry  # no torch: safe in the task's own process
        tel = Telemetry(self.telemetry_addr, rank, node, self.attempt)
        tel.send("rank_exit", code=code, signal=sig, stderr_tail=stderr_tail[-1500:], stopping=False)
        tel.close()


def _forward(proc: subprocess.Popen[bytes], signum: int) -> None:
    try:
        proc.send_signal(signum)
    except ProcessLookupError:
        pass


def rank_process() -> None:
    """The rank's own process: train, then leave at once with the rank's code. No interpreter teardown:
    a process group's destructor can block on a peer that already left (what the local node agent's
    forked ranks avoid the same way)."""
    code = 1
    try:
        from trainer.rank_main import main  # torch loads here, in the child only
        code = int(main())
    except SystemExit as exc:  # a fenced rank (trainer.fence) or an argument error
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the traceback goes to the rank's log, the code to the task
        import traceback
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    rank_process()


@dataclass(frozen=True)
class AgentTask:
    """The in-allocation path's task: one per node, for the whole allocation. It becomes that node's warm
    agent (the local backend's code), dials the supervisor's hub and forks the ranks of every attempt;
    a spare's agent idles until the supervisor gives it a lost node's ranks."""

    run_dir: str
    hub_addr: str

    def __call__(self) -> int:
        from orchestrator.launcher.node_agent import run_agent
        node = os.environ.get("SLURMD_NODENAME") or os.uname().nodename
        os.environ.update(node_link_env(split_host(self.hub_addr)))  # the forked ranks inherit it
        return run_agent(node, Path(self.run_dir), self.hub_addr, preemptible=True)
