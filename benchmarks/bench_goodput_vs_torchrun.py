"""Goodput under faults: the same trainer under ``orchestrator`` and under PyTorch's elastic launcher.

Both sides run ``trainer.rank_main`` with the same resolved config, data, seed, checkpoints and chaos
schedule (faults fire once per run through RUN_DIR/chaos markers, so they fire once under torchrun's
restarts too), on 2 simulated nodes x 2 ranks. The trainer resumes from the newest committed
checkpoint by itself, so torchrun's restarts resume exactly as the orchestrator's relaunches do.

torchrun side, and why it looks like this on one machine:
* two agents, ``torchrun --nnodes=2 --nproc-per-node=2 --max-restarts=N`` with c10d rendezvous and
  TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (TORCH_NOTES: without it restarts hang); the rendezvous store is
  hosted by this process (``is_host=false`` on both agents), as an etcd/store service would be, so losing
  a node does not take the rendezvous with it;
* node failure: the trainer's chaos SIGKILLs its parent, which under torchrun is the agent. A real node
  takes its workers down with it, so this harness then SIGKILLs that agent's workers (tracked with psutil)
  and starts a replacement agent for the node after ``--replace-delay-s`` (0: a warm spare joins at once,
  the most favourable case for torchrun; on Slurm the whole job would be requeued instead);
* hang: torchrun cannot see one (heartbeats are not its business); peers wait for the collective
  timeout, which both launchers' trainers get from ``--collective-timeout-s`` (``health.collective_timeout_s``;
  300 s by default, as NCCL users set their watchdogs to 5-10 min): the peers raise, exit, and torchrun
  restarts the group. ``--hang-cap-s`` (off by default) is only a harness safety net and is reported.
Per-step times come from the trainer's own UDP telemetry (a TelemetryServer in this process) for torchrun
and from metrics.jsonl for the orchestrator; both are scored by benchmarks.common.ledger_from_rows.

Usage: .venv/bin/python benchmarks/bench_goodput_vs_torchrun.py [--scenarios clean,all,rank_crash,...]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import REPO, ledger_from_rows, machine, save_json, table  # noqa: E402

PY = sys.executable
BASE: dict[str, Any] = {
    "name": "gvt",
    "cluster": {"backend": "local", "nodes": 2, "ranks_per_node": 2, "spare_nodes": 1},
    "model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "seq_len": 64},
    "data": {"max_bytes": 600_000},
    "train": {"steps": 120, "global_batch": 8, "lr": 0.001, "schedule": {"warmup_steps": 10},
              "step_sleep_s": 0.15},  # pads each step like a bigger model, without loading the busy cores
    "checkpoint": {"every_steps": 10, "keep": 3},
    "health": {"heartbeat_interval_s": 0.25, "hang_timeout_s": 3.0, "probes": ["node"],
               "straggler": {"window": 10, "factor": 1.5, "min_steps": 7}},
    "policy": {"restart_budget": 6, "backoff_initial_s": 0.05, "backoff_max_s": 0.5,
               "spike": {"window": 10, "k": 6.0, "warmup_steps": 20}},
    "metrics": {"enabled": False},
}
FAULTS: dict[str, dict[str, Any]] = {
    "straggler": {"fault": "straggler", "step": 20, "rank": 1, "slowdown": 3.0, "steps": 15},
    "nan": {"fault": "nan", "step": 40, "rank": 1},
    "loss_spike": {"fault": "loss_spike", "step": 52},
    "rank_crash": {"fault": "rank_crash", "step": 65, "rank": 3},
    "node_failure": {"fault": "node_failure", "step": 82, "node": 1},
    "hang": {"fault": "hang", "step": 98, "rank": 2},
}


def scenario_chaos(name: str) -> list[dict[str, Any]]:
    """clean: no faults; all: the whole schedule; otherwise one fault kind alone at its usual step."""
    if name == "clean":
        return []
    if name == "all":
        return list(FAULTS.values())
    return [FAULTS[name]]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    env.update(extra or {})
    return env


# ---- orchestrator side ----------------------------------------------------------------------------------
def run_orchestrator(cfg: dict[str, Any], work: Path, name: str) -> dict[str, Any]:
    """``orchestrator submit`` as a subprocess (its own interpreter start-up counts, as torchrun's does)."""
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_dir = work / name
    exe = str(Path(PY).with_name("orchestrator"))
    t0 = time.monotonic()
    proc = subprocess.run([exe, "submit", str(path), "--run-dir", str(run_dir), "--quiet"], env=child_env(),
                          cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.monotonic() - t0
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    journal = [json.loads(l) for l in (run_dir / "journal.jsonl").read_text().splitlines() if l.strip()]
    done = [e for e in journal if e["event"] == "complete"]
    faults = [e["kind"] for e in journal if e["event"] == "fault"]
    return score(rows, wall, done[-1].get("eval_loss") if done else None, proc.returncode == 0,
                 {"detected": ",".join(sorted(set(faults))) or "-",
                  "relaunches": sum(1 for e in journal if e["event"] == "launch") - 1})


# ---- torchrun side ---------------------------------------------------------------------------------------
@dataclass
class Agent:
    node: int
    proc: subprocess.Popen[bytes]
    workers: set[int] = field(default_factory=set)


class TorchrunJob:
    """Two torchrun agents on this machine, their workers, and the faults only a harness can play."""

    def __init__(self, run_dir: Path, max_restarts: int, tel_addr: str, store_port: int) -> None:
        self.run_dir, self.max_restarts, self.tel_addr, self.store_port = run_dir, max_restarts, tel_addr, store_port
        self.agents: list[Agent] = []
        self.notes: list[str] = []
        self.capped = 0
        self.log_dir = run_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def start_agent(self, node: int) -> None:
        cmd = [PY, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=2",
               f"--max-restarts={self.max_restarts}", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{self.store_port}", "--rdzv-id=bench",
               "--rdzv-conf=is_host=false,join_timeout=300", "--monitor-interval=0.1",
               "--module", "trainer.rank_main"]
        env = child_env({"ORCH_RUN_DIR": str(self.run_dir), "ORCH_TELEMETRY_ADDR": self.tel_addr,
                         "ORCH_TELEMETRY_KEY_FILE": str(self.run_dir / "telemetry.key"),
                         "ORCH_NODE": f"node{node}", "ORCH_NODE_INDEX": str(node)})
        log = open(self.log_dir / f"agent{node}-{len(self.agents)}.log", "wb")
        self.agents.append(Agent(node, subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log,
                                                        stderr=subprocess.STDOUT, start_new_session=True)))

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
        return [a for a in self.agents if a.proc.poll() is not None and a.proc.returncode < 0
                and not getattr(a, "replaced", False)]

    def stop(self) -> None:
        for a in self.agents:
            if a.proc.poll() is None:
                os.killpg(a.proc.pid, signal.SIGKILL)
        self.kill_workers(self.agents)


def prepare_run_dir(cfg: dict[str, Any], run_dir: Path) -> None:
    """config.yaml = the resolved config, exactly as ``orchestrator submit`` writes it."""
    from orchestrator.config_load import load_config_data
    from orchestrator.rundir import create
    create(run_dir, load_config_data(cfg))


def run_torchrun(cfg: dict[str, Any], work: Path, name: str, args: argparse.Namespace,
                 rows_out: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Drive the two agents, play node failure and the hang cap, collect rank 0's step datagrams
    (into ``rows_out`` too, when given)."""
    from torch.distributed import TCPStore
    from orchestrator.telemetry_auth import create_or_load_key
    from orchestrator.telemetry_server import TelemetryServer
    run_dir = work / name
    prepare_run_dir(cfg, run_dir)
    srv = TelemetryServer(create_or_load_key(run_dir))  # ranks find the key as ORCH_RUN_DIR/telemetry.key
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, multi_tenant=True)
    job = TorchrunJob(run_dir, args.max_restarts, srv.address, store.port)
    rows: list[dict[str, Any]] = rows_out if rows_out is not None else []
    try:
        wall, done = drive(job, srv, rows, args)
    finally:
        job.stop()
        srv.close()
        del store
    ok = done is not None and all(a.proc.returncode == 0 for a in job.agents if not getattr(a, "replaced", False))
    return score(rows, wall, done.get("eval_loss") if done else None, ok,
                 {"detected": "-", "relaunches": "agent restarts", "capped": job.capped, "notes": "; ".join(job.notes)})


def drive(job: TorchrunJob, srv: Any, rows: list[dict[str, Any]],
          args: argparse.Namespace) -> tuple[float, dict[str, Any] | None]:
    """The harness loop: collect telemetry, replace lost nodes, cap hangs; returns (wall s, done event)."""
    done: dict[str, Any] | None = None
    armed = False  # the capped timeout runs only while ranks are past start-up (in collectives)
    t0 = time.monotonic()
    last_progress = t0
    for node in (0, 1):
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
            a.replaced = True  # type: ignore[attr-defined]
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenarios", default="clean,all," + ",".join(FAULTS))
    ap.add_argument("--launchers", default="orchestrator,torchrun")
    ap.add_argument("--steps", type=int, default=None, help="override train.steps (faults must fit)")
    ap.add_argument("--max-restarts", type=int, default=6)
    ap.add_argument("--hang-cap-s", type=float, default=float("inf"))
    ap.add_argument("--collective-timeout-s", type=float, default=300.0,
                    help="health.collective_timeout_s for both launchers' trainers (a realistic watchdog)")
    ap.add_argument("--replace-delay-s", type=float, default=0.0)
    ap.add_argument("--timeout-s", type=float, default=900.0)
    ap.add_argument("--json", default=None, help="append results as JSON lines here")
    args = ap.parse_args(argv)
    print("machine:", machine(), flush=True)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gvt-") as tmp:
        work = Path(tmp)
        for sc in args.scenarios.split(","):
            cfg = dict(BASE, chaos=scenario_chaos(sc),
                       health=dict(BASE["health"], collective_timeout_s=args.collective_timeout_s))
            if args.steps:
                cfg["train"] = dict(BASE["train"], steps=args.steps)
            for launcher in args.launchers.split(","):
                name = f"{sc}-{launcher}"
                r = (run_orchestrator(cfg, work, name) if launcher == "orchestrator"
                     else run_torchrun(cfg, work, name, args))
                results.append({"scenario": sc, "launcher": launcher, **r})
                print(json.dumps(results[-1]), flush=True)
    cols = ["scenario", "launcher", "wall_s", "goodput", "recomputed_steps", "skipped", "steps_kept",
            "eval_loss", "completed", "detected"]
    print(table(results, cols))
    print(table(ratios(results), ["scenario", "goodput_ratio", "wall_ratio"]))
    save_json(args.json, "goodput_vs_torchrun", {"args": vars(args), "results": results})
    return 0


def ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """orchestrator / torchrun goodput and torchrun / orchestrator wall time, per scenario."""
    out = []
    for sc in dict.fromkeys(r["scenario"] for r in results):
        o = next((r for r in results if r["scenario"] == sc and r["launcher"] == "orchestrator"), None)
        t = next((r for r in results if r["scenario"] == sc and r["launcher"] == "torchrun"), None)
        if o and t and t["goodput"] and o["wall_s"]:
            out.append({"scenario": sc, "goodput_ratio": round(o["goodput"] / t["goodput"], 3),
                        "wall_ratio": round(t["wall_s"] / o["wall_s"], 3)})
    return out


if __name__ == "__main__":
    sys.exit(main())
