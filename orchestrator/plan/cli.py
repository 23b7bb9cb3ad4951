"""``orchestrator plan``: arguments and entry point (the lead's CLI registers these on its subparser)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from orchestrator.config_load import ConfigError, load_config
from orchestrator.plan.build import DEFAULT_GPU, DEFAULT_MFU, PlanOptions, build_plan
from orchestrator.plan.hardware import gpu_names
from orchestrator.plan.reliability import DEFAULT_CKPT_BANDWIDTH_GBS, DEFAULT_FAILURE_RATE, DEFAULT_RESTART_S
from orchestrator.plan.report import format_plan, plan_to_dict

_SUFFIX = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


def parse_count(text: str) -> float:
    """'1.4T', '300B', '2e12', '5000000' -> a float; argparse turns the ValueError into a usage error."""
    t = text.strip().upper().replace("_", "").replace(",", "")
    mult = _SUFFIX.get(t[-1:], None)
    try:
        value = float(t[:-1]) * mult if mult else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count like 1.4T, 300B or 2e12") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    """An argparse type that rejects zero and negatives with a usage error, not a traceback."""
    def conv(text: str) -> float:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be positive")
        return v
    return conv


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``orchestrator plan`` (the positional ``config`` is added by the caller if missing)."""
    if not any(a.dest == "config" for a in parser._actions):
        parser.add_argument("config", help="path to run.yaml")
    parser.add_argument("--gpus", type=_positive(int), help="GPUs to plan for (default: the config's world size)")
    parser.add_argument("--gpu-type", default=DEFAULT_GPU, help=f"one of {', '.join(gpu_names())}")
    parser.add_argument("--gpus-per-node", type=_positive(int), help="default: the config's ranks_per_node, "
                        "or the GPU type's server size when --gpus is given")
    parser.add_argument("--tokens", type=parse_count, help="training tokens, e.g. 1.4T (default: "
                        "train.steps x global_batch x seq_len)")
    parser.add_argument("--mfu", type=_positive(float), default=DEFAULT_MFU, help="assumed model FLOPs utilisation")
    parser.add_argument("--price-per-gpu-hour", type=_positive(float), help="to print a cost")
    parser.add_argument("--failure-rate", type=_positive(float), default=DEFAULT_FAILURE_RATE,
                        help="interruptions per GPU-hour (default from Llama 3: 419 in 54 days on 16,384 GPUs)")
    parser.add_argument("--ckpt-bandwidth", type=_positive(float), default=DEFAULT_CKPT_BANDWIDTH_GBS,
                        help="checkpoint write GB/s per node, when not measured")
    parser.add_argument("--restart-cost", type=_positive(float), default=DEFAULT_RESTART_S,
                        help="seconds lost per restart besides the lost work")
    parser.add_argument("--run-dir", type=Path, help="a previous run: measured checkpoint cost (journal.jsonl) "
                        "and gradient noise scale (metrics.jsonl)")
    parser.add_argument("--json", action="store_true", help="print a JSON document instead of tables")


def main(args: argparse.Namespace) -> int:
    """Print the plan; 2 on a config or argument error, 1 when no layout fits, 0 otherwise."""
    overrides = getattr(args, "set", None) or getattr(args, "overrides", None) or []
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    opts = PlanOptions(mfu=args.mfu, price_per_gpu_hour=args.price_per_gpu_hour, failure_rate=args.failure_rate,
                       ckpt_bandwidth_gbs=args.ckpt_bandwidth, restart_s=args.restart_cost,
                       run_dir=args.run_dir, gpus_per_node=args.gpus_per_node)
    try:
        plan = build_plan(cfg, gpus=args.gpus, gpu_type=args.gpu_type, tokens=args.tokens, options=opts)
    except KeyError as exc:
        print(f"--gpu-type: {exc.args[0]}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(plan_to_dict(plan), indent=2))
    else:
        Console().print(format_plan(plan))
    return 0 if plan.layout.fits else 1


def run(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m orchestrator.plan.cli run.yaml ...``) until the lead's CLI wires it."""
    parser = argparse.ArgumentParser(prog="orchestrator plan", description=__doc__)
    add_arguments(parser)
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(run())
