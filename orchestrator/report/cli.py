"""Entry points the ``orchestrator report|compare|export`` subcommands call; each returns an exit code.

Why here and not in the CLI module: the lead wires argument parsing; these keep the behaviour (what
is printed, which exit code) next to the code they drive, and testable without a subprocess.
Exit codes: 0 success / match, 1 diverged, 2 unusable input (the message says what to fix).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from orchestrator.report.compare import compare
from orchestrator.report.html import write_report
from orchestrator.report.trace import export_trace

EXIT_OK, EXIT_DIVERGED, EXIT_BAD_INPUT = 0, 1, 2


def report_main(run_dir: str | Path, out: str | Path | None = None) -> int:
    """Write the HTML report and print where it is."""
    try:
        path = write_report(run_dir, out)
    except (OSError, ValueError) as exc:
        print(f"report: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"report written: {path}")
    return EXIT_OK


def compare_main(run: str | Path, ref: str | Path, tolerance: float = 0.05,
                 as_json: bool = False) -> int:
    """Compare and print the verdict (text or JSON); 0 when it matches, 1 when it diverged."""
    try:
        result = compare(run, ref, tolerance=tolerance)
    except (OSError, ValueError) as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(result.to_dict(), indent=1) if as_json else result.summary())
    return EXIT_OK if result.matched else EXIT_DIVERGED


def export_main(run_dir: str | Path, out: str | Path) -> int:
    """Export the run's trace (TRACE_FORMAT.md) and print where it is."""
    try:
        path = export_trace(run_dir, out)
    except (OSError, ValueError) as exc:
        print(f"export: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"trace written: {path}")
    return EXIT_OK
