"""Post-hoc views of a run, built from its run directory alone: an HTML report, a trace, a comparison.

Why from the run directory: the report must work after the supervisor is gone (or crashed), on a
laptop that only has a copy of ``runs/<name>/``. Nothing here imports the supervisor.
"""

from orchestrator.report.cli import compare_main, export_main, report_main
from orchestrator.report.compare import CompareResult, compare
from orchestrator.report.html import write_report
from orchestrator.report.trace import TRACE_VERSION, export_trace, load_trace

__all__ = ["TRACE_VERSION", "CompareResult", "compare", "compare_main", "export_main",
           "export_trace", "load_trace", "report_main", "write_report"]
