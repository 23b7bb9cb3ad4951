"""Goodput under faults: the same trainer under ``orchestrator``, PyTorch's ``torchrun`` and NVIDIA's
``ft_launcher`` (nvidia-resiliency-ext, the optional ``bench`` extra).

All run ``trainer.rank_main`` with the same resolved config, data, seed, checkpoints and chaos schedule
(faults fire once per run through RUN_DIR/chaos markers, so they fire once across an agent's restarts
too), on 2 simulated nodes x 2 ranks. The trainer resumes from the newest committed checkpoint by
itself, so the agents' restarts resume exactly as the orchestrator's relaunches do.

The agents (``benchmarks/goodput_launchers.py``), and why they look like this on one machine:
* two agents per run, ``--nnodes=2 --nproc-per-node=2 --max-restarts=N`` with c10d rendezvous and
  TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (TORCH_NOTES: without it restarts hang); the rendezvous store is
  hosted by this process (``is_host=false`` on both agents), as an etcd/store service would be, so losing
  a node does not take the rendezvous with it;
* node failure: the trainer's chaos SIGKILLs its parent, which under both is the agent. A real node
  takes its workers down with it, so this harness then SIGKILLs that agent's workers (tracked with psutil)
  and starts a replacement agent for the node after ``--replace-delay-s`` (0: a warm spare joins at once,
  the most favourable case for the agents; on Slurm the whole job would be requeued instead);
* hang: torchrun cannot see one (heartbeats are not its business); peers wait for the collective
  timeout, which every launcher's trainer gets from ``--collective-timeout-s`` (``health.collective_timeout_s``;
  300 s by default, as NCCL users set their watchdogs to 5-10 min): the peers raise, exit, and torchrun
  restarts the group. ft_launcher's rank monitors kill ranks whose per-step heartbeats
  (``trainer.ft_heartbeat``) stop for ``health.hang_timeout_s`` (the orchestrator's own hang timeout;
  initial timeout = ``health.startup_timeout_s``), and the agent restarts the group in-job. ft's docs
  warn that no heartbeats come during checkpoint saves and loads; our supervisor gives those phases the
  start-up timeout. ``--ft-mode sections`` gives ft the same rule through its sections API (a ``step``
  section per step with our hang timeout; checkpoint/restore/eval and start-up with our start-up timeout).
  ``--hang-cap-s`` (off by default) is only a harness safety net and is reported.
Per-step times come from the trainer's own UDP telemetry (a TelemetryServer in this process) for the
agents and from metrics.jsonl for the orchestrator; all are scored by benchmarks.common.ledger_from_rows.

Each cell is run ``--repeats`` times (runs interleaved, so load drift hits every launcher alike) and
reported as median [min-max]. ``lost_s``: a fault's cost in seconds, wall time minus the median clean
wall time of the same launcher (needs ``clean`` among the scenarios), so a launcher's slower start-up
is not charged to the fault and the figure does not depend on the job's length as a goodput ratio does.

Usage: .venv/bin/python benchmarks/bench_goodput_vs_torchrun.py [--scenarios clean,all,rank_crash,...]
       [--launchers orchestrator,torchrun,ft_launcher] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, median, save_json, table  # noqa: E402
from benchmarks.goodput_launchers import FT_MODES, ft_launcher_available, run_elastic, run_orchestrator  # noqa: E402

LAUNCHERS = ("orchestrator", "torchrun", "ft_launcher")
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


def run_one(launcher: str, cfg: dict[str, Any], work: Path, name: str,
            args: argparse.Namespace) -> dict[str, Any]:
    if launcher == "orchestrator":
        return run_orchestrator(cfg, work, name)
    return run_elastic(launcher, cfg, work, name, args)


def spread(xs: list[float], f: str = "{:.1f}") -> str:
    """``median [min–max]`` of a cell's repeats (just the median for one run)."""
    if not xs:
        return "-"
    m = f.format(median(xs))
    return m if len(xs) == 1 else f"{m} [{f.format(min(xs))}–{f.format(max(xs))}]"


def clean_walls(results: list[dict[str, Any]]) -> dict[str, float]:
    """Median clean wall time per launcher: the baseline a fault's seconds lost are measured from."""
    out: dict[str, float] = {}
    for launcher in dict.fromkeys(r["launcher"] for r in results):
        walls = [r["wall_s"] for r in results if r["launcher"] == launcher and r["scenario"] == "clean"]
        if walls:
            out[launcher] = median(walls)
    return out


def lost_s(results: list[dict[str, Any]], scenario: str, launcher: str) -> list[float]:
    """Per repeat: wall - the same launcher's median clean wall (empty without a clean run)."""
    base = clean_walls(results).get(launcher)
    if base is None or scenario == "clean":
        return []
    return [r["wall_s"] - base for r in results if r["scenario"] == scenario and r["launcher"] == launcher]


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (scenario, launcher): medians and ranges over the repeats."""
    rows = []
    cells = dict.fromkeys((r["scenario"], r["launcher"]) for r in results)
    for sc, launcher in cells:
        runs = [r for r in results if r["scenario"] == sc and r["launcher"] == launcher]
        detected = sorted({r["detected"] for r in runs if r.get("detected") not in (None, "-")})
        rows.append({"scenario": sc, "launcher": launcher, "n": len(runs),
                     "wall_s": spread([r["wall_s"] for r in runs]),
                     "lost_s": spread(lost_s(results, sc, launcher)),
                     "goodput": spread([r["goodput"] for r in runs], "{:.3f}"),
                     "recomputed_steps": median([r["recomputed_steps"] for r in runs]),
                     "skipped": median([r["skipped"] for r in runs]),
                     "steps_kept": min(r["steps_kept"] for r in runs),
                     "eval_loss": median([r["eval_loss"] for r in runs if isinstance(r["eval_loss"], float)]),
                     "completed": f"{sum(bool(r['completed']) for r in runs)}/{len(runs)}",
                     "capped": sum(int(r.get("capped") or 0) for r in runs),
                     "detected": "; ".join(detected) or "-"})
    return rows


def comparisons(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scenario and peer: goodput ratio (ours / peer) and wall ratio (peer / ours) from the medians of
    the same session's runs, and each side's median seconds lost against its own clean run."""
    def med(sc: str, launcher: str, key: str) -> float | None:
        xs = [r[key] for r in results if r["scenario"] == sc and r["launcher"] == launcher]
        return median(xs) if xs else None

    out = []
    for sc in dict.fromkeys(r["scenario"] for r in results):
        g_ours, w_ours = med(sc, "orchestrator", "goodput"), med(sc, "orchestrator", "wall_s")
        for peer in ("torchrun", "ft_launcher"):
            g_peer, w_peer = med(sc, peer, "goodput"), med(sc, peer, "wall_s")
            if not (g_ours and w_ours and g_peer and w_peer):
                continue
            lo, lp = lost_s(results, sc, "orchestrator"), lost_s(results, sc, peer)
            out.append({"scenario": sc, "peer": peer, "goodput_ratio": round(g_ours / g_peer, 3),
                        "wall_ratio": round(w_peer / w_ours, 3),
                        "lost_s_ours": round(median(lo), 1) if lo else None,
                        "lost_s_peer": round(median(lp), 1) if lp else None,
                        "fewer_lost": median(lo) < median(lp) if lo and lp else None})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenarios", default="clean,all," + ",".join(FAULTS))
    ap.add_argument("--launchers", default=",".join(LAUNCHERS), help="any of " + ",".join(LAUNCHERS))
    ap.add_argument("--repeats", type=int, default=3, help="runs per (scenario, launcher) cell")
    ap.add_argument("--steps", type=int, default=None, help="override train.steps (faults must fit)")
    ap.add_argument("--step-sleep-s", type=float, default=None,
                    help="override train.step_sleep_s, the per-step padding (0.15 s by default)")
    ap.add_argument("--max-restarts", type=int, default=6, help="torchrun's and ft_launcher's --max-restarts")
    ap.add_argument("--hang-cap-s", type=float, default=float("inf"))
    ap.add_argument("--collective-timeout-s", type=float, default=300.0,
                    help="health.collective_timeout_s for every launcher's trainer (a realistic watchdog)")
    ap.add_argument("--ft-mode", choices=FT_MODES, default="heartbeats",
                    help="how ft_launcher times ranks: per-step heartbeats, or sections that mirror our phases")
    ap.add_argument("--replace-delay-s", type=float, default=0.0)
    ap.add_argument("--timeout-s", type=float, default=900.0)
    ap.add_argument("--skip", default="", help="cells to leave out, as launcher:scenario[,...] (e.g. "
                    "torchrun:hang,torchrun:all, run apart because its watchdog makes them mostly idle waiting)")
    ap.add_argument("--json", default=None, help="append results as JSON lines here")
    args = ap.parse_args(argv)
    launchers = args.launchers.split(",")
    if unknown := set(launchers) - set(LAUNCHERS):
        ap.error(f"unknown launcher(s): {','.join(sorted(unknown))}")
    if "ft_launcher" in launchers and not ft_launcher_available():
        ap.error("ft_launcher is not installed: pip install -e '.[bench]' (nvidia-resiliency-ext)")
    skip = set(filter(None, args.skip.split(",")))
    print("machine:", machine(), flush=True)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gvt-") as tmp:
        work = Path(tmp)
        for rep in range(args.repeats):  # interleaved: load drift hits every launcher alike
            for sc in args.scenarios.split(","):
                cfg = dict(BASE, chaos=scenario_chaos(sc),
                           health=dict(BASE["health"], collective_timeout_s=args.collective_timeout_s))
                if args.steps:
                    cfg["train"] = dict(cfg["train"], steps=args.steps)
                if args.step_sleep_s is not None:
                    cfg["train"] = dict(cfg["train"], step_sleep_s=args.step_sleep_s)
                for launcher in (x for x in launchers if f"{x}:{sc}" not in skip):
                    r = run_one(launcher, cfg, work, f"{sc}-{launcher}-{rep}", args)
                    results.append({"scenario": sc, "launcher": launcher, "repeat": rep, **r,
                                    "load1_after": round(os.getloadavg()[0], 2)})  # the load it ran under
                    print(json.dumps(results[-1]), flush=True)
    summary, comp = summarize(results), comparisons(results)
    print(table(summary, ["scenario", "launcher", "n", "wall_s", "lost_s", "goodput", "recomputed_steps",
                          "skipped", "steps_kept", "eval_loss", "completed", "capped", "detected"]))
    print(table(comp, ["scenario", "peer", "goodput_ratio", "wall_ratio", "lost_s_ours", "lost_s_peer",
                       "fewer_lost"]))
    if "clean" not in args.scenarios.split(","):
        print("(lost_s needs the clean scenario in the same session: add clean to --scenarios)")
    save_json(args.json, "goodput_vs_torchrun", {"args": vars(args), "results": results,
                                                 "summary": summary, "comparisons": comp})
    return 0


if __name__ == "__main__":
    sys.exit(main())
