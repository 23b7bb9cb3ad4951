"""Discrete-event model of a 16,384-GPU run: expected goodput under our policy vs restart-from-checkpoint.

Failures follow the Llama 3 405B report (419 unexpected interruptions in 54 days on 16,384 GPUs, about
78% hardware), as a Poisson process in wall time; on top, "soft" faults (NaN/Inf, loss spikes) that are
not interruptions for us but are for a launcher without an in-step guard. Every trial draws one fault
history and plays it against each policy (common random numbers: the difference between policies is not
drowned in the noise between histories).

* ours: NaN/spike skipped in-step (one step lost); crash / node loss / hang relaunched after detection,
  a warm spare replaces a lost node (spares come back after repair), async checkpoints at the Young/Daly
  interval for the *blocking* cost; a checkpoint is durable only after its background write finished.
* baseline (torchrun-like), at its best: every fault is a full job restart: detection (a hang waits for
  a realistic watchdog), start-up, checkpoint load; the same warm spares as ours (a lost node waits for the
  requeue only when no spare is free); synchronous checkpoints at *its own* Young/Daly optimum for its
  synchronous save cost (``--baseline-interval-min`` overrides).
* ours+memory: ours with the memory tier (trainer.memtier): a copy in host RAM, replicated to a partner
  node, at the Young/Daly interval for the copy's *blocking* cost; every interruption resumes from it
  (crash and hang: the node's own copy; node loss: the partner's), durable once written and replicated
  (``mem_write_s``); storage checkpoints are written from that copy in the background (no blocking cost).
  Not modelled: a node and its ring partner lost within one recovery (about 1e-5 per node loss at the
  Llama 3 rate with minutes of exposure), which falls back to storage.
* bound: the first-order Young/Daly goodput 1 - C/tau - (tau/2 + R)/M at tau* = sqrt(2CM), for each
  policy's own C and mean R (orchestrator.plan.reliability).

Each segment between two interruptions is solved in closed form (checkpoints are periodic), so a trial
costs O(faults), and thousands of trials take seconds.

Usage: .venv/bin/python benchmarks/sim_at_scale.py [--trials 500] [--preset measured|at-scale] [...]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import save_json, table  # noqa: E402
from benchmarks.measured import values as measured_values  # noqa: E402
from orchestrator.plan.reliability import (LLAMA3_DAYS, LLAMA3_GPUS, LLAMA3_INTERRUPTIONS,  # noqa: E402
                                           goodput as yd_goodput, young_daly_interval)

KINDS = ("hardware", "crash", "hang", "soft")

# Costs in seconds. "measured": read from benchmarks/measured.json, which the benchmarks write (each
# entry with its source, date and machine): a tiny model on a 2-core machine. "at-scale": documented
# assumptions for 16k GPUs.
COST_KEYS = ("ours_detect_s", "ours_hang_detect_s", "ours_relaunch_s", "base_detect_s", "base_node_detect_s",
             "base_hang_detect_s", "base_restart_s", "requeue_s", "load_s", "async_block_s", "sync_save_s",
             "step_s")
MEM_KEYS = ("mem_block_s", "mem_write_s", "mem_load_s")  # optional: the ours+memory policy needs all three
PRESETS: dict[str, dict[str, float]] = {
    "measured": measured_values(),
    "at-scale": {"ours_detect_s": 10.0, "ours_hang_detect_s": 60.0, "ours_relaunch_s": 120.0,
                 "base_detect_s": 30.0, "base_node_detect_s": 600.0, "base_hang_detect_s": 600.0,
                 "base_restart_s": 600.0, "requeue_s": 900.0, "load_s": 120.0, "async_block_s": 3.0,
                 "sync_save_s": 60.0, "step_s": 15.0,
                 # memory tier: ~400 MB of a 405B model's state per GPU copied to host RAM (DLRover's flash
                 # checkpoint reports ~0.2 s stalls; 0.5 s taken), replicated to the partner in 5 s, loaded
                 # back in 20 s (assumptions)
                 "mem_block_s": 0.5, "mem_write_s": 5.0, "mem_load_s": 20.0},
}


@dataclass(frozen=True)
class Fault:
    t: float
    kind: str


@dataclass(frozen=True)
class Costs:
    detect_s: dict[str, float]  # per kind
    restart_s: float  # relaunch / start-up, excluding detection and checkpoint load
    load_s: float
    block_s: float  # training stops this long per checkpoint
    write_s: float  # the checkpoint is durable this long after it was taken
    interval_s: float  # training time between checkpoints
    requeue_s: float  # wait for nodes when a node is lost and no spare is free
    spares: int  # warm spare nodes (0: every lost node waits for the requeue)
    repair_s: float  # a used spare is back after this long
    soft_in_step: bool  # NaN/spike cost one step instead of an interruption
    step_s: float


def draw_faults(rng: random.Random, horizon_s: float, mtbf_s: float, hw_frac: float, hang_frac: float,
                soft_per_day: float) -> list[Fault]:
    """Interruptions (Poisson, MTBF ``mtbf_s``) split into hardware/hang/crash, plus soft faults."""
    out: list[Fault] = []
    t = rng.expovariate(1.0 / mtbf_s)
    while t < horizon_s:
        u = rng.random()
        out.append(Fault(t, "hardware" if u < hw_frac else "hang" if u < hw_frac + hang_frac else "crash"))
        t += rng.expovariate(1.0 / mtbf_s)
    if soft_per_day > 0:
        t = rng.expovariate(soft_per_day / 86400.0)
        while t < horizon_s:
            out.append(Fault(t, "soft"))
            t += rng.expovariate(soft_per_day / 86400.0)
    return sorted(out, key=lambda f: f.t)


def work_by(x: float, c: Costs) -> tuple[float, float]:
    """(work done, work durable) after ``x`` wall seconds of training that started right after a load."""
    cycle = c.interval_s + c.block_s
    n = math.floor(x / cycle)
    done = n * c.interval_s + min(x - n * cycle, c.interval_s)
    k = max(0, math.floor((x - (c.write_s - c.block_s)) / cycle)) if x >= c.write_s else 0
    return done, min(k, n) * c.interval_s


def simulate(faults: list[Fault], horizon_s: float, c: Costs) -> dict[str, float]:
    """Play one fault history; returns goodput and where the time went."""
    t, progress, lost_work, down, n_int = 0.0, 0.0, 0.0, 0.0, 0
    seg_start, seg_base = 0.0, 0.0  # wall time the segment began, skip losses inside it
    spare_back: list[float] = []
    for f in faults:
        if f.t < t:  # arrived while we were down: recovery starts over (no work was being done)
            t = max(t, f.t + recovery_s(f, c, spare_back))
            continue
        if f.kind == "soft" and c.soft_in_step:
            seg_base += c.step_s  # one step discarded, training goes on
            continue
        done, durable = work_by(f.t - seg_start, c)
        progress += max(0.0, durable - seg_base)
        lost_work += done - durable
        n_int += 1
        rec = recovery_s(f, c, spare_back)
        down += rec
        t = f.t + rec
        seg_start, seg_base = t, 0.0
    if t < horizon_s:
        done, _ = work_by(horizon_s - seg_start, c)
        progress += max(0.0, done - seg_base)
    return {"goodput": progress / horizon_s, "interruptions": n_int, "down_h": down / 3600,
            "lost_work_h": lost_work / 3600}


def recovery_s(f: Fault, c: Costs, spare_back: list[float]) -> float:
    """Detection + (requeue if no spare) + restart + load, for one interruption at ``f.t``."""
    wait = 0.0
    if f.kind == "hardware":
        spare_back[:] = [b for b in spare_back if b > f.t]
        if len(spare_back) < c.spares:
            spare_back.append(f.t + c.repair_s)
        else:
            wait = c.requeue_s
    return c.detect_s[f.kind] + wait + c.restart_s + c.load_s


def policies(a: argparse.Namespace, mtbf_s: float) -> dict[str, Costs]:
    """Our policy and the torchrun-like baseline, from the command line's costs."""
    ours_interval = young_daly_interval(a.async_block_s, mtbf_s)
    ours = Costs({"hardware": a.ours_detect_s, "crash": a.ours_detect_s, "hang": a.ours_hang_detect_s,
                  "soft": 0.0}, a.ours_relaunch_s, a.load_s, a.async_block_s, max(a.sync_save_s, a.async_block_s),
                 ours_interval, a.requeue_s, a.spares, a.repair_h * 3600, True, a.step_s)
    base_interval = (a.baseline_interval_min * 60 if a.baseline_interval_min is not None
                     else young_daly_interval(a.sync_save_s, mtbf_s))
    base = Costs({"hardware": a.base_node_detect_s, "crash": a.base_detect_s, "hang": a.base_hang_detect_s,
                  "soft": a.base_detect_s}, a.base_restart_s, a.load_s, a.sync_save_s, a.sync_save_s,
                 base_interval, a.requeue_s, a.spares, a.repair_h * 3600, False, a.step_s)
    pols = {"ours": ours, "baseline": base}
    if all(getattr(a, k, None) is not None for k in MEM_KEYS):
        pols["ours+memory"] = Costs(ours.detect_s, a.ours_relaunch_s, a.mem_load_s, a.mem_block_s,
                                    max(a.mem_write_s, a.mem_block_s), young_daly_interval(a.mem_block_s, mtbf_s),
                                    a.requeue_s, a.spares, a.repair_h * 3600, True, a.step_s)
    return pols


def mean_recovery(c: Costs, a: argparse.Namespace, soft: bool) -> float:
    """Mean cost R of an interruption for the Young/Daly bound (spares assumed free for ours)."""
    mix = {"hardware": a.hw_frac, "hang": a.hang_frac, "crash": 1 - a.hw_frac - a.hang_frac}
    r = sum(w * (c.detect_s[k] + c.restart_s + c.load_s) for k, w in mix.items())
    return r + (0.0 if c.spares else a.hw_frac * c.requeue_s)


def sensitivity(a: argparse.Namespace) -> list[dict[str, Any]]:
    """Goodput of both policies with the MTBF and every restart cost halved and doubled (same draws)."""
    out = []
    for label, mtbf_x, restart_x in (("as measured", 1.0, 1.0), ("MTBF x0.5", 0.5, 1.0), ("MTBF x2", 2.0, 1.0),
                                     ("restart x0.5", 1.0, 0.5), ("restart x2", 1.0, 2.0)):
        b = argparse.Namespace(**vars(a))
        b.mtbf_scale = a.mtbf_scale * mtbf_x
        for k in ("ours_relaunch_s", "base_restart_s", "requeue_s"):
            setattr(b, k, getattr(a, k) * restart_x)
        rows = {r["policy"]: r for r in run(b, quiet=True) if r["policy"] in ("ours", "baseline")}
        out.append({"case": label, "ours": rows["ours"]["goodput_mean"], "baseline": rows["baseline"]["goodput_mean"],
                    "ours_interval_min": rows["ours"]["interval_min"],
                    "baseline_interval_min": rows["baseline"]["interval_min"]})
    return out


def summarize(name: str, xs: list[dict[str, float]], interval_s: float) -> dict[str, Any]:
    g = sorted(x["goodput"] for x in xs)
    return {"policy": name, "interval_min": round(interval_s / 60, 2), "goodput_mean": statistics.fmean(g),
            "goodput_sd": statistics.pstdev(g), "p5": g[int(0.05 * (len(g) - 1))], "p95": g[int(0.95 * (len(g) - 1))],
            "interruptions": statistics.fmean(x["interruptions"] for x in xs),
            "down_h": statistics.fmean(x["down_h"] for x in xs),
            "lost_work_h": statistics.fmean(x["lost_work_h"] for x in xs)}


def run(a: argparse.Namespace, quiet: bool = False) -> list[dict[str, Any]]:
    rate = LLAMA3_INTERRUPTIONS / (LLAMA3_DAYS * 86400 * LLAMA3_GPUS)  # per GPU-second
    mtbf = a.mtbf_scale / (rate * a.gpus)
    horizon = a.days * 86400
    pols = policies(a, mtbf)
    res: dict[str, list[dict[str, float]]] = {k: [] for k in pols}
    rng = random.Random(a.seed)
    for _ in range(a.trials):
        faults = draw_faults(rng, horizon, mtbf, a.hw_frac, a.hang_frac, a.soft_per_day)
        for k, c in pols.items():
            res[k].append(simulate(faults, horizon, c))
    rows = [summarize(k, res[k], pols[k].interval_s) for k in pols]
    for k, c in pols.items():
        r = mean_recovery(c, a, c.soft_in_step)
        tau = young_daly_interval(c.block_s, mtbf)
        rows.append({"policy": f"young-daly bound ({k} costs)", "interval_min": round(tau / 60, 2),
                     "goodput_mean": yd_goodput(tau, c.block_s, mtbf, r)})
    if not quiet:
        print(f"job MTBF {mtbf / 3600:.2f} h on {a.gpus} GPUs; {a.trials} trials of {a.days:g} days; both policies "
              f"at their Young/Daly interval: ours {pols['ours'].interval_s / 60:.2f} min (C={a.async_block_s:g}s "
              f"blocking), baseline {pols['baseline'].interval_s / 60:.2f} min (C={a.sync_save_s:g}s sync); "
              f"{a.spares} spares each")
    return rows


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="measured")
    ap.add_argument("--gpus", type=int, default=LLAMA3_GPUS)
    ap.add_argument("--days", type=float, default=54.0)
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hw-frac", type=float, default=0.78, help="share of interruptions that lose a node")
    ap.add_argument("--hang-frac", type=float, default=0.05, help="share that hang instead of crashing")
    ap.add_argument("--soft-per-day", type=float, default=1.0, help="NaN/loss-spike events per day")
    ap.add_argument("--spares", type=int, default=4)
    ap.add_argument("--repair-h", type=float, default=24.0)
    ap.add_argument("--baseline-interval-min", type=float, default=None,
                    help="default: the baseline's own Young/Daly optimum")
    ap.add_argument("--mtbf-scale", type=float, default=1.0, help="multiply the Llama 3 MTBF")
    ap.add_argument("--sensitivity", action="store_true", help="also MTBF and restart cost x0.5 / x2")
    for k in COST_KEYS + MEM_KEYS:
        ap.add_argument("--" + k.replace("_", "-"), type=float, default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    for k, v in PRESETS[a.preset].items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    missing = [k for k in COST_KEYS if getattr(a, k) is None]
    if missing:
        ap.error(f"no value for {', '.join(missing)}: run the benchmarks that write benchmarks/measured.json "
                 f"or pass --{missing[0].replace('_', '-')}")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    rows = run(a)
    print(table(rows, ["policy", "interval_min", "goodput_mean", "goodput_sd", "p5", "p95", "interruptions",
                       "down_h", "lost_work_h"]))
    sens = sensitivity(a) if a.sensitivity else []
    if sens:
        print(table(sens, ["case", "ours", "baseline", "ours_interval_min", "baseline_interval_min"]))
    save_json(a.json, "sim_at_scale", {"args": vars(a), "rows": rows, "sensitivity": sens})
    return 0


if __name__ == "__main__":
    sys.exit(main())
