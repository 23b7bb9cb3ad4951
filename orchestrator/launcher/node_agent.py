"""One simulated node of the local cluster: ``python -m orchestrator.launcher.node_agent SPEC_JSON``.

The agent starts its ranks as child processes that die with it (``PR_SET_PDEATHSIG``), so killing the
agent is a node failure: every rank on it vanishes at once. It reports each rank's exit (code, signal,
the tail of its log) to the supervisor and also writes it to the run directory, so nothing is lost
while no supervisor is listening.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from trainer.telemetry import Telemetry

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def tail(path: Path, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


class NodeAgent:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.log_dir = Path(spec["log_dir"])
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.tel = Telemetry(spec.get("telemetry"), -1, spec["node"], spec["attempt"])
        self.stopping = False

    def _rank_env(self, rank: int, local: int) -> dict[str, str]:
        s = self.spec
        env = dict(os.environ)
        env.update({"RANK": str(rank), "WORLD_SIZE": str(s["world"]), "LOCAL_RANK": str(local),
                    "LOCAL_WORLD_SIZE": str(len(s["ranks"])), "MASTER_ADDR": s["master_addr"],
                    "MASTER_PORT": str(s["master_port"]), "ORCH_RUN_DIR": s["run_dir"],
                    "ORCH_ATTEMPT": str(s["attempt"]), "ORCH_NODE": s["node"],
                    "ORCH_NODE_INDEX": str(s["node_index"]), "OMP_NUM_THREADS": "1",
                    "PYTHONUNBUFFERED": "1"})
        if s.get("telemetry"):
            env["ORCH_TELEMETRY_ADDR"] = s["telemetry"]
        return env

    def start(self) -> None:
        for local, rank in enumerate(self.spec["ranks"]):
            log = open(self.log_dir / f"{self.spec['node']}-rank{rank}.log", "ab")
            self.procs[rank] = subprocess.Popen(
                [sys.executable, "-X", "faulthandler", "-m", "trainer.rank_main"],
                env=self._rank_env(rank, local), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
            log.close()

    def _report_exit(self, rank: int, code: int) -> None:
        sig = -code if code < 0 else None
        info = {"rank": rank, "node": self.spec["node"], "code": code, "signal": sig, "t": time.time(),
                "stderr_tail": tail(self.log_dir / f"{self.spec['node']}-rank{rank}.log")}
        (self.log_dir / f"{self.spec['node']}-rank{rank}.exit.json").write_text(json.dumps(info))
        self.tel.rank = rank
        self.tel.send("rank_exit", code=code, signal=sig, stderr_tail=info["stderr_tail"][-1500:],
                      stopping=self.stopping)

    def stop(self, *_: object) -> None:
        """SIGTERM: stop every rank (SIGTERM now, SIGKILL after a grace period); ``wait`` reaps them."""
        self.stopping = True
        for p in self.procs.values():
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        timer = threading.Timer(float(self.spec.get("grace_s", 3.0)), self._kill_all)
        timer.daemon = True
        timer.start()

    def _kill_all(self) -> None:
        for p in self.procs.values():
            if p.returncode is None:
                try:
                    p.kill()
                except ProcessLookupError:
                    pass

    def wait(self) -> int:
        pending = dict(self.procs)
        while pending:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            for rank, p in list(pending.items()):
                if p.pid == pid:
                    p.returncode = os.waitstatus_to_exitcode(status)
                    self._report_exit(rank, p.returncode)
                    del pending[rank]
        return 0


def main() -> int:
    spec = json.loads(sys.argv[1])
    agent = NodeAgent(spec)
    signal.signal(signal.SIGTERM, agent.stop)
    signal.signal(signal.SIGINT, agent.stop)
    agent.start()
    return agent.wait()


if __name__ == "__main__":
    sys.exit(main())
