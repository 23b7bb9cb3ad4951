"""One simulated node of the local cluster: ``python -m orchestrator.launcher.node_agent NODE RUN_DIR``.

The agent lives as long as the supervisor (it exits when its command pipe closes) and is *warm*: it
imports torch and the trainer and loads the corpus once, then forks the ranks of each attempt, so a
relaunch costs a fork instead of seconds of imports per rank. Ranks die with their agent
(``PR_SET_PDEATHSIG``): killing the agent is a node failure. Every rank exit is reported to the
supervisor (telemetry) and written to the run directory, so nothing is lost while nobody listens.

Commands (stdin, one JSON object a line): ``launch`` {spec}, ``stop`` {grace_s}, ``exit``.
Replies (stdout, one JSON object a line): ``ready``, ``ranks_done`` {attempt, codes}, ``stopped``.
"""

from __future__ import annotations

import ctypes
import json
import os
import selectors
import signal
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.telemetry_auth import ENV_KEY_FILE, key_from_env, key_path

PR_SET_PDEATHSIG = 1


def tail(path: Path, limit: int = 2000) -> str:
    """The last ``limit`` bytes of a rank's log: what classify_exit reads for Xid, OOM, NCCL errors."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def reply(**msg: Any) -> None:
    os.write(1, (json.dumps(msg) + "\n").encode())


def warm_up(run_dir: Path) -> None:
    """Import the trainer, load the corpus and run the first-call paths once now (model build,
    optimizer-state init, a forward/backward, a DCP save and load), so every forked rank starts warm.

    Single-threaded on purpose (``set_num_threads(1)``): no thread pool exists when the agent forks.
    """
    import tempfile

    # torch.cuda.is_available() (DCP calls it) would initialise CUDA here, and a forked rank cannot use
    # CUDA after that: ask NVML instead, which does not poison fork.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch
    import torch.distributed.checkpoint as dcp
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
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=tmp, no_dist=True)
        dcp.load({"model": msd, "optim": osd}, checkpoint_id=tmp, no_dist=True)


def run_rank(spec: dict[str, Any], rank: int, local: int, log: Path) -> None:
    """In the forked child: become rank ``rank`` and never return."""
    code = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.environ.update(rank_env(spec, rank, local))
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
    env = {"RANK": str(rank), "WORLD_SIZE": str(s["world"]), "LOCAL_RANK": str(local),
           "LOCAL_WORLD_SIZE": str(len(s["ranks"])), "MASTER_ADDR": s["master_addr"],
           "MASTER_PORT": str(s["master_port"]), "ORCH_RUN_DIR": s["run_dir"], "ORCH_ATTEMPT": str(s["attempt"]),
           "ORCH_NODE": s["node"], "ORCH_NODE_INDEX": str(s["node_index"]), "OMP_NUM_THREADS": "1"}
    # the rank's index among all ranks on this host (trainer.device picks cuda:<it>)
    env["ORCH_HOST_LOCAL_RANK"] = str(int(s.get("host_rank_base", 0)) + local)
    env["ORCH_HOST_LOCAL_WORLD"] = str(s.get("host_world", len(s["ranks"])))
    if s.get("telemetry"):
        env["ORCH_TELEMETRY_ADDR"] = s["telemetry"]
        env[ENV_KEY_FILE] = str(key_path(s["run_dir"]))  # the path, never the key, in the environment
    return env


class NodeAgent:
    def __init__(self, node: str) -> None:
        from trainer.telemetry import Telemetry
        self.node = node
        self.spec: dict[str, Any] = {}
        self.children: dict[int, int] = {}  # pid → rank
        self.codes: dict[int, int] = {}
        self.tel: Telemetry | None = None
        self.stop_deadline: float | None = None
        self.stopping = False

    def launch(self, spec: dict[str, Any]) -> None:
        from trainer.telemetry import Telemetry
        self.spec, self.codes, self.stopping, self.stop_deadline = spec, {}, False, None
        self.tel = Telemetry(spec.get("telemetry"), -1, self.node, spec["attempt"],
                             key=key_from_env({"ORCH_RUN_DIR": spec["run_dir"]}))
        log_dir = Path(spec["log_dir"])
        log_dir.mkdir(parents=True, exist_ok=True)
        for local, rank in enumerate(spec["ranks"]):
            pid = os.fork()
            if pid == 0:
                run_rank(spec, rank, local, log_dir / f"{self.node}-rank{rank}.log")
            self.children[pid] = rank

    def stop(self, grace_s: float) -> None:
        self.stopping = True
        for pid in self.children:
            _signal(pid, signal.SIGTERM)
        self.stop_deadline = time.monotonic() + grace_s
        if not self.children:
            reply(ev="stopped")

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                break
            rank = self.children.pop(pid, None)
            if rank is not None:
                self.report(rank, os.waitstatus_to_exitcode(status))
        if self.stop_deadline is not None and self.children and time.monotonic() > self.stop_deadline:
            for pid in self.children:
                _signal(pid, signal.SIGKILL)
        if self.spec and not self.children:
            heal_link()
            reply(ev="stopped" if self.stopping else "ranks_done", attempt=self.spec["attempt"], codes=self.codes)
            self.spec, self.stop_deadline = {}, None

    def report(self, rank: int, code: int) -> None:
        self.codes[rank] = code
        log = Path(self.spec["log_dir"]) / f"{self.node}-rank{rank}.log"
        sig = -code if code < 0 else None
        info = {"rank": rank, "node": self.node, "code": code, "signal": sig, "t": time.time(),
                "stderr_tail": tail(log)}
        (log.parent / f"{self.node}-rank{rank}.exit.json").write_text(json.dumps(info))
        if self.tel is not None:
            self.tel.rank = rank
            self.tel.send("rank_exit", code=code, signal=sig, stderr_tail=info["stderr_tail"][-1500:],
                          stopping=self.stopping)


def heal_link() -> None:
    """An attempt's ranks are gone: undo a partition or slow link they injected on this node's link."""
    from orchestrator.netns import heal, node_netif
    netif = node_netif()
    if netif is not None:
        heal(netif)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def serve(agent: NodeAgent) -> int:
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ)
    sel.register(r, selectors.EVENT_READ)
    buf = b""
    while True:
        for key, _ in sel.select(timeout=0.1):
            if key.fd == r:
                os.read(r, 4096)
                continue
            chunk = os.read(0, 65536)
            if not chunk:  # the supervisor is gone: take the ranks down with us
                agent.stop(0.5)
                _drain(agent)
                return 0
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if handle(agent, json.loads(line)):
                    _drain(agent)
                    return 0
        agent.reap()


def handle(agent: NodeAgent, cmd: dict[str, Any]) -> bool:
    """Apply one command; True means exit."""
    if cmd["cmd"] == "launch":
        agent.launch(cmd["spec"])
    elif cmd["cmd"] == "stop":
        agent.stop(float(cmd.get("grace_s", 3.0)))
    elif cmd["cmd"] == "exit":
        agent.stop(float(cmd.get("grace_s", 1.0)))
        return True
    return False


def _drain(agent: NodeAgent) -> None:
    deadline = time.monotonic() + 5
    while agent.children and time.monotonic() < deadline:
        agent.reap()
        time.sleep(0.01)


def main() -> int:
    node, run_dir = sys.argv[1], Path(sys.argv[2])
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    warm_up(run_dir)
    reply(ev="ready", pid=os.getpid())
    return serve(NodeAgent(node))


if __name__ == "__main__":
    sys.exit(main())
