"""``orchestrator`` command line: parse, then hand over to one function per command.

Exit codes: 0 success (run COMPLETED), 1 the run FAILED, 2 bad input (nothing launched).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="path to run.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="a.b=VALUE",
                   help="override a config field (value parsed as YAML); repeatable")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): what is wrong, and where help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="orchestrator", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("submit", help="launch a run and supervise it in the foreground")
    _add_config_args(p)
    p.add_argument("--run-dir", help="run directory (default: runs/<name>)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("--plan", action="store_true", help="print the plan (orchestrator plan) first")
    p = sub.add_parser("resume", help="continue a run from its run directory")
    p.add_argument("run_dir")
    p.add_argument("--quiet", action="store_true")
    p = sub.add_parser("status", help="where a run stands, from its run directory")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("validate", help="check a run.yaml without launching anything")
    _add_config_args(p)
    p = sub.add_parser("cancel", help="stop a run's ranks (and its Slurm jobs)")
    p.add_argument("run_dir")
    p = sub.add_parser("probe", help="run the health probes")
    p.add_argument("config", nargs="?")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("plan", help="budget, layout and checkpoint interval for a run.yaml")
    _add_plan_args(p)
    p = sub.add_parser("alerts", help="alert rules")
    p.add_argument("what", choices=["rules"])
    p = sub.add_parser("report", help="write an HTML report of a run")
    p.add_argument("run_dir")
    p.add_argument("--out")
    p = sub.add_parser("compare", help="compare a run's trace with a reference")
    p.add_argument("run")
    p.add_argument("reference")
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("export-trace", help="write a run's trace file")
    p.add_argument("run_dir")
    p.add_argument("--out", help="default: RUN_DIR/trace.json")
    p = sub.add_parser("dashboard", help="print a Grafana dashboard (JSON) for the exporter's metrics")
    p.add_argument("--title", default="orchestrator run")
    p.add_argument("--uid", default="orchestrator-run", help="Grafana dashboard uid")
    p.add_argument("--out", help="write to this file instead of stdout")
    p = sub.add_parser("ls", help="every run under a directory: state, step, goodput, faults, last change")
    p.add_argument("dir", nargs="?", default="runs", help="default: ./runs")
    p.add_argument("--json", action="store_true")
    return ap


def _add_plan_args(p: argparse.ArgumentParser) -> None:
    try:
        from orchestrator.plan.cli import add_arguments
    except ImportError:
        p.add_argument("config")
        return
    add_arguments(p)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from orchestrator import commands
    handler = getattr(commands, f"cmd_{args.command.replace('-', '_')}")
    from orchestrator.cli_input import BadInput
    from orchestrator.config_load import ConfigError
    try:
        return int(handler(args))
    except (BadInput, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PermissionError as exc:  # another user's file the checks could not foresee
        print(f"error: {exc.filename}: permission denied", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `orchestrator ls | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
