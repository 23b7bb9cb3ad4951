"""The launchers that ``bench_goodput_vs_torchrun.py`` compares, each run once and scored the same way.

* ``orchestrator``: ``orchestrator submit`` as a subprocess; rows from its metrics.jsonl.
* ``torchrun`` and ``ft_launcher``: two elastic agents (one per simulated node) driven by
  :class:`ElasticJob`; rows from the trainer's own UDP telemetry, collected by a TelemetryServer here.
  ``ft_launcher`` (NVIDIA nvidia-resiliency-ext) is torchrun plus a rank monitor per local rank that
  SIGKILLs a rank whose heartbeats stop (the trainer sends one per step through
  ``trainer.ft_heartbeat``), or, with ``ft_mode="sections"``, whose step/busy/setup section outlives
  our hang or start-up timeout; the agent then restarts the worker group in-job.

Both agent kinds get the same harness: c10d rendezvous on a store hosted by this process
(``is_host=false``, like an external etcd, so losing a node does not take the rendezvous with it),
TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (without it restarts hang), node failure played by SIGKILLing
the dead agent's workers and starting a replacement agent (a warm spare), and the optional hang cap.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from benchmarks.common import REPO, ledger_from_rows

PY = sys.executable
ELASTIC = ("torchrun", "ft_launcher")
# What the rank monitor logs when it kills a rank for a timeout (nvidia-resiliency-ext 0.4.1).
FT_TIMEOUT_MARKS = ("Did not get subsequent heartbeat", "Did not get initial heartbeat", "has been open for",
                    "Was out of section for")
FT_MODES = ("heartbeats", "sections")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)  # keep a caller's site dir
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path, TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    env.update(extra or {})
    return env


def ft_launcher_available() -> bool:
    """The ft_launcher entry point sits next to this interpreter when the ``bench`` extra is installed."""
    return Path(PY).with_name("ft_launcher").exists()


# ---- orchestrator ------------------------------------------------------------------------------------
def run_orchestrator(cfg: dict[str, Any], work: Path, name: str) -> dict[str, Any]:
    """``orchestrator submit`` as a subprocess (its own interpreter start-up counts, as the agents' do)."""
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_dir = work / name
    exe = Path(PY).with_name("orchestrator")  # the console script; without it (a bare checkout), the module
    cmd = [str(exe)] if exe.exists() else [PY, "-m", "orchestrator.cli"]
    t0 = time.monotonic()
    proc = subprocess.run([*cmd, "submit", str(path), "--run-dir", str(run_dir), "--quiet"], env=child_env(),
                          cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.monotonic() - t0
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    journal = [json.loads(l) for l in (run_dir / "journal.jsonl").read_text().splitlines() if l.strip()]
    done = [e for e in journal if e["event"] == "complete"]
    faults = [e["kind"] for e in journal if e["event"] == "fault"]
    return score(rows, wall, done[-1].get("eval_loss") if done else None, proc.returncode == 0,
                 {"detected": ",".join(sorted(set(faults))) or "-",
                  "relaunches": sum(1 for e in journal if e["event"] == "launch") - 1})


# ---- elastic agents: torchrun and ft_launcher -----------------------------------------------------------
@dataclass
class Agent:
    node: int
    proc: subprocess.Popen[bytes]
    log: Path
    workers: set[int] = field(default_factory=set)
    replaced: bool = False


class ElasticJob:
    """One agent per node on this machine, their workers, and the faults only a harness can play."""

    def __init__(self, kind: str, cfg: dict[str, Any], run_dir: Path, max_restarts: int, tel_addr: str,
                 store_port: int, ft_mode: str = "heartbeats") -> None:
        assert kind in ELASTIC and ft_mode in FT_MODES, (kind, ft_mode)
        self.kind, self.cfg, self.run_dir, self.ft_mode = kind, cfg, run_dir, ft_mode
        self.max_restarts, self.tel_addr, self.store_port = max_restarts, tel_addr, store_port
        self.agents: list[Agent] = []
        self.notes: list[str] = []
        self.capped = 0
        self.log_dir = run_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        """The torchrun command line; ft_launcher takes the same flags plus its heartbeat timeouts."""
        c = self.cfg["cluster"]
        common = [f"--nnodes={c['nodes']}", f"--nproc-per-node={c['ranks_per_node']}",
                  f"--max-restarts={self.max_restarts}", "--rdzv-backend=c10d",
                  f"--rdzv-endpoint=127.0.0.1:{self.store_port}", "--rdzv-id=bench",
                  "--rdzv-conf=is_host=false,join_timeout=300", "--monitor-interval=0.1"]
        if self.kind == "torchrun":
            return [PY, "-m", "torch.distributed.run", *common, "--module", "trainer.rank_main"]
        h = self.cfg["health"]
        hang, startup = h["hang_timeout_s"], h.get("startup_timeout_s", 120.0)
        # The monitor checks as often as our ranks heartbeat (its default, 5 s, would only slow it down).
        ft = [f"--ft-workload-check-interval={h['heartbeat_interval_s']}"]
        if self.ft_mode == "heartbeats":  # heartbeat timeout = our hang timeout; initial = our start-up one
            ft += [f"--ft-rank-heartbeat-timeout={hang}", f"--ft-initial-rank-heartbeat-timeout={startup}"]
        else:  # our supervisor's rule as ft sections (trainer.ft_heartbeat); heartbeats only a backstop
            ft += [f"--ft-rank-heartbeat-timeout={startup}", f"--ft-initial-rank-heartbeat-timeout={startup}",
                   f"--ft-rank-section-timeouts=setup:{startup},step:{hang},busy:{startup}",
                   f"--ft-rank-out-of-section-timeout={hang}"]
        return [str(Path(PY).with_name("ft_launcher")), *common, *ft, "-m", "trainer.rank_main"]

    def start_agent(self, node: int) -> None:
        env = child_env({"ORCH_RUN_DIR": str(self.run_dir), "ORCH_TELEMETRY_ADDR": self.tel_addr,
                         "ORCH_TELEMETRY_KEY_FILE": str(self.run_dir / "telemetry.key"),
                         "ORCH_NODE": f"node{node}", "ORCH_NODE_INDEX": str(node),
                         "ORCH_FT_SECTIONS": "1" if self.ft_mode == "sections" else "0"})
        path = self.log_dir / f"agent{node}-{len(self.agents)}.log"
        with open(path, "wb") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(self.command(), env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.agents.append(Agent(node, proc, path))

    def track_workers(self) -> None:
        """Remember each live agent's descendants: once an agent dies they are orphans we must reap."""
        for a in self.agents:
            if a.proc.poll() is None:
                try:
                    a.workers |= {c.pid for c in psutil.Process(a.proc.pid).children(recursive=True)}
                except psutil.NoSuchProcess:
                    pass

    def kill_workers(self, agents: list[Agent]) -> None:
        for a in agents:
            for pid in a.workers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            a.workers = set()

    def live(self) -> list[Agent]:
        return [a for a in self.agents if a.proc.poll() is None]

    def node_failures(self) -> list[Agent]:
        """Agents killed by a signal that we have not replaced yet (rc < 0: SIGKILL from the chaos)."""
        return [a for a in self.agents if a.proc.poll() is not None and a.proc.returncode < 0 and not a.replaced]

    def ft_timed_out(self) -> bool:
        """Did an ft rank monitor kill a rank for a timeout? (its warning in the agents' logs)"""
        text = "".join(a.log.read_text(errors="replace") for a in self.agents if a.log.exists())
        return any(m in text for m in FT_TIMEOUT_MARKS)

    def stop(self) -> None:
        for a in self.agents:
            if a.proc.poll() is None:
                os.killpg(a.proc.pid, signal.SIGKILL)
        self.kill_workers(self.agents)
        for a in self.agents:
            a.proc.wait()


def prepare_run_dir(cfg: dict[str, Any], run_dir: Path) -> None:
    """config.yaml = the resolved config, exactly as ``orchestrator submit`` writes it."""
    from orchestrator.config_load import load_config_data
    from orchestrator.rundir import create
    create(run_dir, load_config_data(cfg))


def run_elastic(kind: str, cfg: dict[str, Any], work: Path, name: str, args: argparse.Namespace,
                rows_out: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Drive the agents, play node failure and the hang cap, collect rank 0's step datagrams
    (into ``rows_out`` too, when given). ``args``: max_restarts, hang_cap_s, replace_delay_s, timeout_s and,
    for ft_launcher, ft_mode (heartbeats: default)."""
    from torch.distributed import TCPStore
    from trainer.telemetry_auth import create_or_load_key
    from orchestrator.telemetry_server import TelemetryServer
    run_dir = work / name
    prepare_run_dir(cfg, run_dir)
    srv = TelemetryServer(create_or_load_key(run_dir))  # ranks find the key as ORCH_RUN_DIR/telemetry.key
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, multi_tenant=True)
    job = ElasticJob(kind, cfg, run_dir, args.max_restarts, srv.address, store.port,
                     getattr(args, "ft_mode", "heartbeats"))
    rows: list[dict[str, Any]] = rows_out if rows_out is not None else []
    try:
        wall, done = drive(job, srv, rows, args)
    finally:
        job.stop()
        srv.close()
        del store
    ok = done is not None and all(a.proc.returncode == 0 for a in job.agents if not a.replaced)
    hb = kind == "ft_launcher" and job.ft_timed_out()
    return score(rows, wall, done.get("eval_loss") if done else None, ok,
                 {"detected": f"hang (ft {job.ft_mode} timeout)" if hb else "-", "relaunches": "agent restarts",
                  "capped": job.capped, "notes": "; ".join(job.notes), "logs": str(job.log_dir)})


def drive(job: ElasticJob, srv: Any, rows: list[dict[str, Any]],
          args: argparse.Namespace) -> tuple[float, dict[str, Any] | None]:
    """The harness loop: collect telemetry, replace lost nodes, cap hangs; returns (wall s, done event)."""
    done: dict[str, Any] | None = None
    armed = False  # the capped timeout runs only while ranks are past start-up (in collectives)
    t0 = time.monotonic()
    last_progress = t0
    for node in range(job.cfg["cluster"]["nodes"]):
        job.start_agent(node)
    while job.live() or job.node_failures():
        select.select([srv.fileno()], [], [], 0.1)
        now = time.monotonic()
        for m in srv.drain():
            if m["rank"] == 0 and m["type"] == "step":
                rows.append(m)
                last_progress, armed = now, True
            elif m["rank"] == 0 and m["type"] == "event" and m.get("kind") == "started":
                last_progress, armed = now, True  # in collectives from here: the timeout applies
            elif m["rank"] == 0 and m["type"] == "event" and m.get("kind") == "done":
                done = m
        job.track_workers()
        for a in job.node_failures():
            a.replaced = True
            job.kill_workers([a])  # the node is gone: so are its workers
            job.notes.append(f"node{a.node} lost at {now - t0:.1f}s")
            time.sleep(args.replace_delay_s)
            job.start_agent(a.node)
            last_progress, armed = time.monotonic(), False
        if armed and done is None and now - last_progress > args.hang_cap_s:
            job.capped += 1
            job.notes.append(f"no step for {args.hang_cap_s:g}s: workers killed (capped collective timeout)")
            job.kill_workers(job.live())
            last_progress, armed = now, False
        if now - t0 > args.timeout_s:
            job.notes.append("benchmark timeout")
            break
    return time.monotonic() - t0, done


# ---- scoring -------------------------------------------------------------------------------------------
def score(rows: list[dict[str, Any]], wall: float, eval_loss: float | None, ok: bool,
          extra: dict[str, Any]) -> dict[str, Any]:
    led = ledger_from_rows(rows)
    return {"wall_s": round(wall, 2), "goodput": round(led.goodput(wall), 4),
            "productive_s": round(led.productive_s, 2), "recomputed_steps": led.recomputed_steps,
            "skipped": led.skipped_steps, "steps_kept": len(led.kept),
            "eval_loss": round(eval_loss, 4) if isinstance(eval_loss, float) else eval_loss,
            "completed": ok, **extra}
