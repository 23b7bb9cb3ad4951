"""One node's warm agent, on every backend: ``python -m orchestrator.launcher.node_agent NODE RUN_DIR
[--connect HOST:PORT]``.

The agent lives as long as the supervisor (it exits when its command channel closes) and is *warm*: it
imports torch and the trainer and loads the corpus once, then forks the ranks of each attempt, so a
relaunch costs a fork instead of seconds of imports per rank. Ranks die with their agent
(``PR_SET_PDEATHSIG``): killing the agent is a node failure. Every rank exit is reported to the
supervisor (telemetry) and written to the run directory, so nothing is lost while nobody listens.

The channel: stdin/stdout pipes on the local cluster (the supervisor is its parent), or, with
``--connect``, an authenticated TCP link the agent dials to the supervisor's hub (Slurm: the agent runs
on another host; :mod:`orchestrator.launcher.agent_link`). Same protocol on both, one JSON object a line.
Commands: ``launch`` {spec}, ``stop`` {grace_s}, ``exit``, ``ping``, ``signal`` {sig}, ``probe``, ``port``,
``probe_worker`` {env, deadline_s} (orchestrator.launcher.probe_workers).
Replies: ``ready``, ``hb`` (every ``health.heartbeat_interval_s``: silence means a lost node), ``launched``
(the launch's work is done: health.detectors.agent_silence),
``ranks_done`` {attempt, codes}, ``stopped``, ``pong``, ``probe`` {verdict}, ``port`` {port}.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import selectors
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainer.telemetry_auth import ENV_KEY_FILE, key_from_env, key_path
from orchestrator.launcher.child import become_child
from spec.layout import checkpoint_root, rank_exit_name, rank_log_name
from spec.layout import rank_env as layout_rank_env

RANK_START_ENV = "ORCH_RANK_START"  # "fork" | "exec"; unset: exec where ranks use CUDA, fork elsewhere


def tail(path: Path, limit: int = 2000) -> str:
    """The last ``limit`` bytes of a rank's log: what classify_exit reads for Xid, OOM, NCCL errors."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


class PipeChannel:
    """The local cluster's channel: commands on stdin, replies on stdout."""

    def __init__(self) -> None:
        self.buf = b""

    def fileno(self) -> int:
        return 0

    def send(self, msg: dict[str, Any]) -> bool:
        if msg.get("ev") == "hb" and not select.select([], [1], [], 0)[1]:
            return False  # a full pipe (nobody reading now): a heartbeat is not worth blocking for
        try:
            os.write(1, (json.dumps(msg) + "\n").encode())
            return True
        except OSError:
            return False

    def read(self) -> list[dict[str, Any]] | None:
        """Complete commands available now; None once the supervisor's end is closed."""
        chunk = os.read(0, 65536)
        if not chunk:
            return None
        self.buf += chunk
        out = []
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            out.append(json.loads(line))
        return out


class LinkChannel:
    """The channel across hosts: the authenticated link to the supervisor's hub."""

    def __init__(self, link: Any) -> None:
        self.link = link

    def fileno(self) -> int:
        return int(self.link.fileno())

    def send(self, msg: dict[str, Any]) -> bool:
        return bool(self.link.send(msg))

    def read(self) -> list[dict[str, Any]] | None:
        msgs = self.link.read()
        return None if self.link.closed and not msgs else msgs


def warm_up(run_dir: Path) -> Any:
    """Import the trainer, load the corpus and run the first-call paths once now (model build,
    optimizer-state init, a forward/backward, a DCP save and load), so every forked rank starts warm.

    Single-threaded on purpose (``set_num_threads(1)``): no thread pool exists when the agent forks.
    """
    import tempfile

    # torch.cuda.is_available() (DCP calls it) would initialise CUDA here, and a forked rank cannot use
    # CUDA after that: ask NVML instead, which does not poison fork.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch
    from torch.distributed.checkpoint.state_dict import get_state_dict

    import trainer.rank_main as rm
    from trainer.data import preload_corpus
    from trainer.engine import SD_OPTIONS
    from trainer.model import GPT, lm_loss
    torch.set_num_threads(1)
    cfg = rm.load_run_config(run_dir)
    preload_corpus(cfg.data, cfg.model.seq_len)
    model = GPT(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=0.0, foreach=False)
    x = torch.zeros(1, min(8, cfg.model.seq_len), dtype=torch.long)
    lm_loss(model(x), x).backward()
    msd, osd = get_state_dict(model, opt, options=SD_OPTIONS)
    with tempfile.TemporaryDirectory() as tmp:
        dcp_round_trip({"model": msd, "optim": osd}, Path(tmp))
    return cfg


def dcp_round_trip(state: dict[str, Any], path: Path) -> None:
    """A DCP save and load of a CPU state that never initialises CUDA.

    Why: on a GPU machine DCP's default writer copies "ahead" on the current CUDA stream whenever
    ``torch.cuda.is_available()``, even for CPU tensors; that initialises CUDA in the agent, and every
    rank it forks then dies with "Cannot re-initialize CUDA in forked subprocess" (seen on an H200).
    ``per_thread_copy_ahead=0`` takes the serial CPU loader instead.
    """
    import torch.distributed.checkpoint as dcp
    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(path), per_thread_copy_ahead=0), no_dist=True)
    dcp.load(state, storage_reader=dcp.FileSystemReader(str(path)), no_dist=True)


def fresh_interpreter_for_ranks(device: str) -> bool:
    """Whether forked ranks must exec a fresh interpreter: where they will use CUDA.

    Why: a CUDA driver touched by the parent (cuInit, e.g. by the autograd engine's first backward, which
    counts the devices) leaves a forked child "CUDA error: initialization error" (seen on an H200, after
    the DCP cause was removed). An exec'd rank shares no driver state; it pays the imports the warm fork
    saves, on GPU nodes only. ``ORCH_RANK_START`` (fork|exec) overrides.
    """
    forced = os.environ.get(RANK_START_ENV, "")
    if forced in ("fork", "exec"):
        return forced == "exec"
    if device == "cpu":
        return False
    import torch
    # device_count asks NVML first, which does not initialise the driver
    return device == "cuda" or (torch.version.cuda is not None and torch.cuda.device_count() > 0)


def exec_rank(rank: int) -> None:
    """Replace this forked child by ``python -m trainer.rank_main`` (same pid, log, environment and
    death signal), so the rank starts with no CUDA state from its agent."""
    print(f"rank {rank}: started as a fresh interpreter ({RANK_START_ENV}=exec or a CUDA run)", flush=True)
    os.environ["PYTHONFAULTHANDLER"] = "1"
    os.execv(sys.executable, [sys.executable, "-m", "trainer.rank_main"])


def run_rank(spec: dict[str, Any], rank: int, local: int, log: Path, fresh: bool = False) -> None:
    """In the forked child: become rank ``rank`` (``fresh``: by exec'ing a new interpreter) and never return."""
    code = 1
    os.environ["ORCH_FORKED_T"] = str(time.time())  # the rank reports its start-up phases from here
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        become_child(fd, fd)
        os.environ.update(rank_env(spec, rank, local))
        if fresh:
            exec_rank(rank)
        import faulthandler
        faulthandler.enable()
        from trainer.rank_main import main
        code = main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the traceback goes to the rank's log, the code to the agent
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def rank_env(s: dict[str, Any], rank: int, local: int) -> dict[str, str]:
    env = layout_rank_env(rank=rank, world=s["world"], local_rank=local, master_addr=s["master_addr"],
                          master_port=s["master_port"], run_dir=s["run_dir"], attempt=s["attempt"], node=s["node"],
                          node_index=s["node_index"], local_world=len(s["ranks"]))
    # the rank's index among all ranks on this host (trainer.device picks cuda:<it>)
    env["ORCH_HOST_LOCAL_RANK"] = str(int(s.get("host_rank_base", 0)) + local)
    env["ORCH_HOST_LOCAL_WORLD"] = str(s.get("host_world", len(s["ranks"])))
    if s.get("telemetry"):
        env["ORCH_TELEMETRY_ADDR"] = s.get("rank_telemetry") or s["telemetry"]  # the node's relay, if any
        env[ENV_KEY_FILE] = str(key_path(s["run_dir"]))  # the path, never the key, in the environment
    return env


class NodeAgent:
    def __init__(self, node: str, channel: PipeChannel | LinkChannel, run_dir: Path) -> None:
        from trainer.telemetry import Telemetry
        self.node, self.channel, self.run_dir = node, channel, run_dir
        self.spec: dict[str, Any] = {}
        self.children: dict[int, int] = {}  # pid → rank
        self.codes: dict[int, int] = {}
        self.tel: Telemetry | None = None
        self.stop_deadline: float | None = None
        self.stopping = False
        self.mem: Any = None  # the memory tier's node side (orchestrator.memtier_service)
        self.preemptible = False  # a Slurm task: SIGTERM announces preemption instead of ending the agent
        self.redial: Any = None  # Slurm: dials the hub again (a resumed supervisor re-attaches to us)
        self.redial_s = 0.0
        self.unsent: list[dict[str, Any]] = []  # what the ranks reported while no supervisor listened
        self.preempted = False
        self.fresh_ranks = False  # exec a new interpreter per rank (CUDA runs): fresh_interpreter_for_ranks
        from orchestrator.launcher.probe_workers import ProbeWorkers
        self.probes = ProbeWorkers()  # ranks of the supervisor's collective probe placed here
        self.relay: Any = None  # this attempt's telemetry relay (telemetry_relay.NodeRelay), when it has one
        self.sel: selectors.BaseSelector | None = None
        self.heartbeat_s = 0.5
        self.next_hb = 0.0

    def heartbeat_if_due(self) -> None:
        """Silence past the supervisor's timeout reads as a lost node: beat on time, also from inside a
        long step of the main loop (a memory-tier fetch waiting on a slow source)."""
        if time.monotonic() >= self.next_hb:
            self.reply(ev="hb", t=time.time(), ranks=len(self.children))
            self.next_hb = time.monotonic() + self.heartbeat_s

    def preempt_notice(self) -> None:
        """Slurm preempts the allocation: ranks checkpoint (SIGTERM, also sent to them by Slurm), and the
        supervisor learns it was a preemption, not a crash, before the links drop."""
        if not self.preempted:
            self.preempted = True
            self.signal_ranks("TERM")
            self.reply(ev="preempt_notice", t=time.time())

    def launch(self, spec: dict[str, Any]) -> None:
        from trainer.telemetry import Telemetry
        self.spec, self.codes, self.stopping, self.stop_deadline = spec, {}, False, None
        self.tel = Telemetry(spec.get("telemetry"), -1, self.node, spec["attempt"],
                             key=key_from_env({"ORCH_RUN_DIR": spec["run_dir"]}))
        self.open_relay(spec)
        log_dir = Path(spec["log_dir"])
        log_dir.mkdir(parents=True, exist_ok=True)
        if self.mem is not None:
            self.mem.before_launch(spec, self.heartbeat_if_due)  # ring partner; copies of ranks that moved here
        with self.memtier_quiet():  # no memtier thread mid-I/O while forking
            for local, rank in enumerate(spec["ranks"]):
                pid = os.fork()
                if pid == 0:
                    run_rank(spec, rank, local, log_dir / rank_log_name(self.node, rank), self.fresh_ranks)
                self.children[pid] = rank
        self.reply(ev="launched", attempt=spec["attempt"], t=time.time())  # its silence is judged afresh

    @contextlib.contextmanager
    def memtier_quiet(self) -> Iterator[None]:
        """Hold the memory tier's lock (its pusher may be mid-push for seconds), heartbeating while
        waiting for it: a spare waiting here is working, not lost."""
        if self.mem is None:
            yield
            return
        while not self.mem.busy.acquire(timeout=0.1):
            self.heartbeat_if_due()
        try:
            yield
        finally:
            self.mem.busy.release()

    def open_relay(self, spec: dict[str, Any]) -> None:
        """The ranks of this attempt report to a relay on this node, which sends the supervisor one
        aggregate per heartbeat interval (orchestrator.launcher.telemetry_relay)."""
        from orchestrator.launcher.telemetry_relay import NodeRelay
        self.close_relay()
        key = key_from_env({"ORCH_RUN_DIR": spec["run_dir"]})
        if not spec.get("telemetry") or key is None:
            return
        self.relay = NodeRelay(key, spec["telemetry"], self.node, spec["attempt"], list(spec["ranks"]),
                               self.heartbeat_s)
        spec["rank_telemetry"] = self.relay.address
        if self.sel is not None:
            self.sel.register(self.relay.fileno(), selectors.EVENT_READ)

    def close_relay(self) -> None:
        if self.relay is not None:
            self.relay.flush()
            if self.sel is not None:
                self.sel.unregister(self.relay.fileno())
            self.relay.close()
            self.relay = None

    def stop(self, grace_s: float) -> None:
        """SIGKILL: a rank reads SIGTERM as preemption (checkpoint, exit 75), and a stopped attempt is
        fenced, so there is nothing for it to finish."""
        self.stopping = True
        for pid in self.children:
            _signal(pid, signal.SIGKILL)
        self.stop_deadline = time.monotonic() + grace_s
        if not self.children:
            self.reply(ev="stopped")

    def reap(self) -> None:
        self.probes.expire()
        while self.children or self.probes.running:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                break
            if self.probes.reaped(pid, os.waitstatus_to_exitcode(status)):
                continue
            rank = self.children.pop(pid, None)
            if rank is not None:
                self.report(rank, os.waitstatus_to_exitcode(status))
        if self.stop_deadline is not None and self.children and time.monotonic() > self.stop_deadline:
            for pid in self.children:
                _signal(pid, signal.SIGKILL)
        if self.spec and not self.children:
            heal_link()
            self.reply(ev="stopped" if self.stopping else "ranks_done", attempt=self.spec["attempt"],
                       codes=self.codes)
            self.spec, self.stop_deadline = {}, None

    def reply(self, **msg: Any) -> None:
        if not self.channel.send(msg) and msg.get("ev") in ("ranks_done", "stopped"):
            self.unsent.append(msg)  # told to a resumed supervisor once it dials back

    def signal_ranks(self, name: str) -> None:
        """Pass a signal on to every rank (USR1: dump stacks, USR2: checkpoint before the time limit,
        TERM: preemption, checkpoint and leave)."""
        sig = {"USR1": signal.SIGUSR1, "USR2": signal.SIGUSR2, "TERM": signal.SIGTERM}.get(name)
        for pid in list(self.children) if sig is not None else []:
            _signal(pid, sig)

    def probe(self) -> None:
        """The node probe (disk round trip in the checkpoint directory, memory, kernel log), here."""
        from health.probes.node import probe_node
        from trainer.rank_main import load_run_config
        cfg = load_run_config(self.run_dir)
        try:
            r = probe_node(checkpoint_root(self.run_dir, cfg.checkpoint.dir), node=self.node)
            self.reply(ev="probe", verdict=r.verdict, fault_kind=r.fault_kind)
        except Exception as exc:  # noqa: BLE001 - a probe that cannot run is a failed probe
            self.reply(ev="probe", verdict="failed", fault_kind=None, detail=repr(exc)[:300])

    def report(self, rank: int, code: int) -> None:
        self.codes[rank] = code
        log = Path(self.spec["log_dir"]) / rank_log_name(self.node, rank)
        sig = -code if code < 0 else None
        info = {"rank": rank, "node": self.node, "code": code, "signal": sig, "t": time.time(),
                "stderr_tail": tail(log)}
        (log.parent / rank_exit_name(self.node, rank)).write_text(json.dumps(info))
        if self.relay is not None:
            self.relay.pump()  # what the rank sent before it ended goes first
            self.relay.forget(rank)
        if self.tel is not None:
            self.tel.rank = rank
            self.tel.send("rank_exit", code=code, signal=sig, stderr_tail=info["stderr_tail"][-1500:],
                          stopping=self.stopping)


def heal_link() -> None:
    """An attempt's ranks are gone: undo a partition or slow link they injected on this node's link."""
    from trainer.node_net import heal, node_netif
    netif = node_netif()
    if netif is not None:
        heal(netif)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def serve(agent: NodeAgent, heartbeat_s: float) -> int:
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    for sig in (signal.SIGUSR1, signal.SIGUSR2):  # Slurm's signals to the task are the ranks' to act on
        signal.signal(sig, lambda signum, _f: agent.signal_ranks(signal.Signals(signum).name[3:]))
    if agent.preemptible:  # under Slurm, SIGTERM is a preemption notice: the agent stays, its ranks checkpoint
        signal.signal(signal.SIGTERM, lambda *_: agent.preempt_notice())
    sel = selectors.DefaultSelector()
    channel_fd = agent.channel.fileno()
    sel.register(channel_fd, selectors.EVENT_READ)
    sel.register(r, selectors.EVENT_READ)
    agent.sel, agent.heartbeat_s = sel, heartbeat_s
    while True:
        for key, _ in sel.select(timeout=min(0.1, heartbeat_s)):
            if key.fd == r:
                os.read(r, 4096)
                continue
            if agent.relay is not None and key.fd == agent.relay.fileno():
                continue  # pumped below, every turn
            cmds = agent.channel.read()
            if cmds is None:
                sel.unregister(channel_fd)
                if agent.redial is not None and redial(agent):  # a resumed supervisor took us back
                    channel_fd = agent.channel.fileno()
                    sel.register(channel_fd, selectors.EVENT_READ)
                    break
                agent.stop(0.5)  # the supervisor is gone for good: take the ranks down with us
                _drain(agent)
                return 0
            for cmd in cmds:
                if handle(agent, cmd):
                    _drain(agent)
                    return 0
        if agent.relay is not None:
            agent.relay.pump()
        agent.reap()
        agent.heartbeat_if_due()


def redial(agent: NodeAgent) -> bool:
    """The supervisor's link broke (it was killed, or its host restarted it): keep the ranks running and
    dial the hub's journaled address again for ``redial_s``, so that ``orchestrator resume`` re-attaches
    to this warm allocation instead of asking for a new one. Then say who we are and what ran meanwhile."""
    deadline = time.monotonic() + agent.redial_s
    while time.monotonic() < deadline:
        agent.reap()
        try:
            agent.channel = LinkChannel(agent.redial())
        except Exception:  # noqa: BLE001 - no hub yet (refused, reset, handshake): try again shortly
            time.sleep(0.5)
            continue
        agent.reply(ev="ready", pid=os.getpid(), host=os.uname().nodename, reattached=True,
                    mem_port=agent.mem.port if agent.mem is not None else None,
                    attempt=agent.spec.get("attempt"), ranks=sorted(agent.children.values()))
        unsent, agent.unsent = agent.unsent, []
        for msg in unsent:
            agent.reply(**msg)
        return True
    return False


def handle(agent: NodeAgent, cmd: dict[str, Any]) -> bool:
    """Apply one command; True means exit."""
    what = cmd.get("cmd")
    if what == "launch":
        agent.launch(cmd["spec"])
    elif what == "stop":
        agent.stop(float(cmd.get("grace_s", 3.0)))
    elif what == "exit":
        agent.stop(float(cmd.get("grace_s", 1.0)))
        return True
    elif what == "ping":
        agent.reply(ev="pong", t=time.time())
    elif what == "signal":
        agent.signal_ranks(str(cmd.get("sig")))
    elif what == "probe":
        agent.probe()
    elif what == "probe_worker":  # one rank of the supervisor's collective probe, on this node
        agent.probes.start(cmd)
    elif what == "port":
        agent.reply(ev="port", port=_free_port())
    return False


def _free_port() -> int:
    """A port free on this host now, for the next attempt's rendezvous (rank 0 runs here)."""
    import socket
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _drain(agent: NodeAgent) -> None:
    deadline = time.monotonic() + 5
    while agent.children and time.monotonic() < deadline:
        agent.reap()
        time.sleep(0.01)


def run_agent(node: str, run_dir: Path, connect: str | None = None, preemptible: bool = False,
              cfg: Any = None) -> int:
    """Warm up (unless forked warm with ``cfg`` by :mod:`agent_zygote`), open the channel (pipes, or the
    authenticated link to ``connect``), then serve.
    ``preemptible``: a Slurm task, where SIGTERM is the scheduler's preemption notice."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN if preemptible else signal.SIG_DFL)
    cfg = cfg if cfg is not None else warm_up(run_dir)
    if connect is None:
        channel: PipeChannel | LinkChannel = PipeChannel()
    else:
        from orchestrator.launcher.agent_link import dial
        from trainer.telemetry_auth import read_key
        key, job = read_key(key_path(run_dir)), os.environ.get("SLURM_JOB_ID", "")  # job: proves which allocation
        channel = LinkChannel(dial(connect, key, node, job=job))
    agent = NodeAgent(node, channel, run_dir)
    agent.preemptible = preemptible
    agent.fresh_ranks = fresh_interpreter_for_ranks(cfg.cluster.device)
    if connect is not None and preemptible:  # Slurm: outlive a supervisor restart (orchestrator resume)
        agent.redial = lambda: dial(connect, key, node, job=job)
        agent.redial_s = max(60.0, float(cfg.health.startup_timeout_s))
    from orchestrator import memtier_service
    host = channel.link.sock.getsockname()[0] if isinstance(channel, LinkChannel) else None  # reaches the others
    agent.mem = memtier_service.start(node, run_dir, host)  # the memory tier's directory dies with the agent
    agent.reply(ev="ready", pid=os.getpid(), host=os.uname().nodename, mem_port=agent.mem.port)
    try:
        return serve(agent, cfg.health.heartbeat_interval_s)
    finally:
        agent.mem.close()


def main() -> int:
    import argparse
    ap = argparse.ArgumentParser(description="one node's warm agent")
    ap.add_argument("node")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--connect", help="HOST:PORT of the supervisor's hub (across hosts)")
    a = ap.parse_args()
    return run_agent(a.node, a.run_dir, a.connect)


if __name__ == "__main__":
    sys.exit(main())
