"""One function per CLI command; each returns the process exit code."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console

from orchestrator import rundir
from orchestrator.cli_input import BadInput, existing_dir, run_config, run_dir_arg, run_status, writable_output
from spec.config import RunConfig
from orchestrator.config_load import ConfigError, layout_warnings, load_config
from orchestrator.journal import Journal, read_journal
from orchestrator.launcher.registry import make_launcher
from orchestrator.progress import ProgressDisplay, summary_table
from orchestrator.snapshot import RunSnapshot, read_status

err = Console(stderr=True)


def _config_or_exit(args: argparse.Namespace) -> RunConfig | None:
    try:
        cfg = load_config(args.config, getattr(args, "overrides", []))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    for w in layout_warnings(cfg):
        print(f"warning: {w}", file=sys.stderr)
    return cfg


def cmd_validate(args: argparse.Namespace) -> int:
    cfg = _config_or_exit(args)
    if cfg is None:
        return 2
    print(f"{args.config}: valid ({cfg.cluster.backend}, {cfg.cluster.nodes} nodes x "
          f"{cfg.cluster.ranks_per_node} ranks, {cfg.train.steps} steps, {len(cfg.chaos)} chaos faults)")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    cfg = _config_or_exit(args)
    if cfg is None:
        return 2
    if args.plan:
        from orchestrator.plan.cli import add_arguments
        plan_parser = argparse.ArgumentParser(add_help=False)
        add_arguments(plan_parser)
        plan_args = plan_parser.parse_args([args.config])
        plan_args.overrides = args.overrides
        cmd_plan(plan_args)
    wanted = Path(args.run_dir) if args.run_dir else rundir.default_run_dir(cfg)
    try:
        run_dir = rundir.create(wanted, cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileExistsError:
        raise BadInput(f"--run-dir {wanted}: is a file, not a directory") from None
    except NotADirectoryError:
        raise BadInput(f"--run-dir {wanted}: a parent of it is a file") from None
    except PermissionError as exc:
        raise BadInput(f"--run-dir {wanted}: permission denied ({exc.filename})") from None
    print(f"run directory: {run_dir}", file=sys.stderr)
    return supervise(cfg, run_dir, args.quiet, resume=False)


def cmd_resume(args: argparse.Namespace) -> int:
    run_dir = run_dir_arg(args.run_dir, started=True, verb="resume").resolve()
    cfg = run_config(run_dir)
    status = read_status(run_dir) or {}
    if status.get("state") == "COMPLETED":
        print(f"{run_dir}: already COMPLETED", file=sys.stderr)
        return 0
    run_dir_arg(run_dir, writable=True, verb="resume")
    return supervise(cfg, run_dir, args.quiet, resume=True)


def supervise(cfg: RunConfig, run_dir: Path, quiet: bool, resume: bool) -> int:
    from orchestrator.supervisor import Supervisor
    try:
        lock = rundir.lock(run_dir)
    except rundir.RunDirLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with ExitStack() as stack:
        stack.callback(lock.close)
        journal = stack.enter_context(Journal(run_dir))
        display = stack.enter_context(ProgressDisplay(quiet=quiet))
        on_update = _with_tensorboard(cfg, run_dir, display.update, stack)
        sup = Supervisor(cfg, run_dir, make_launcher(cfg, run_dir), journal, on_update=on_update)
        if not quiet:
            sup.say = lambda text: print(text, file=sys.stderr, flush=True)
        _start_metrics(cfg, sup, stack)
        _attach_preflight(cfg, sup, run_dir)
        if resume:
            sup.restore(list(read_journal(run_dir)))
        code = sup.run()
    Console().print(summary_table(sup.snap))
    if code != 0:
        print(f"FAILED: {sup.snap.reason}", file=sys.stderr)
    return code


def _with_tensorboard(cfg: RunConfig, run_dir: Path, update: Callable[[RunSnapshot], None],
                      stack: ExitStack) -> Callable[[RunSnapshot], None]:
    """``update`` plus, with ``metrics.tensorboard``, the run's one TensorBoard writer."""
    if not cfg.metrics.tensorboard:
        return update
    from orchestrator.tensorboard_writer import LOG_DIR, TensorBoardSink, open_writer
    sink = TensorBoardSink(open_writer(run_dir))
    stack.callback(sink.close)
    print(f"tensorboard: tensorboard --logdir {run_dir / LOG_DIR}", file=sys.stderr)

    def both(snap: RunSnapshot) -> None:
        update(snap)
        sink.update(snap)
    return both


def _start_metrics(cfg: RunConfig, sup: Any, stack: ExitStack) -> None:
    if not cfg.metrics.enabled:
        return
    from orchestrator.metrics.server import MetricsServer
    server = MetricsServer(lambda: sup.snap, host=cfg.metrics.host, port=cfg.metrics.port,
                           allow_public=cfg.metrics.allow_public_bind,
                           alertmanager_url=cfg.metrics.alertmanager_url,
                           restart_budget=cfg.policy.restart_budget)
    server.start()
    stack.callback(server.stop)
    sup.journal.append("metrics_endpoint", url=server.url)
    (sup.run_dir / "metrics.url").write_text(server.url + "\n")
    print(f"metrics: {server.url}/metrics  alerts: {server.url}/alerts", file=sys.stderr)


def _attach_preflight(cfg: RunConfig, sup: Any, run_dir: Path) -> None:
    if not cfg.health.preflight:
        return
    own = sup.launcher.own_preflight()  # Slurm: probes run on the nodes (srun, or the warm agents)
    if own is not None:
        sup.preflight = own
        return
    from orchestrator.preflight import make_preflight
    sup.preflight = make_preflight(cfg, run_dir, sup.journal,
                                   sup.launcher.link_probe_runner(cfg.cluster.ranks_per_node))


def cmd_status(args: argparse.Namespace) -> int:
    run_dir = existing_dir(args.run_dir)
    st = run_status(run_dir)
    try:
        out = json.dumps(status_json(st), indent=1) if args.json else summary_table(st)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadInput(f"{run_dir}/status.json: unexpected content ({exc!r})") from None
    if args.json:
        print(out)
    else:
        Console().print(out)
    return 0


def status_json(st: dict[str, Any]) -> dict[str, Any]:
    keys = ("state", "reason", "step", "total_steps", "loss", "eval_loss", "goodput", "restarts",
            "excluded_nodes", "lost", "wall_s", "productive_s", "jobs", "active_nodes", "predicted_goodput",
            "intervals")
    out = {k: st.get(k) for k in keys}
    fault_keys = ("kind", "step", "rank", "node", "detected_after_s", "injected_t", "detected_t", "action",
                  "lost_steps")
    out["faults"] = [{k: f.get(k) for k in fault_keys} for f in st.get("faults", [])]
    return out


def cmd_cancel(args: argparse.Namespace) -> int:
    from orchestrator.cancel import cancel_run
    run_dir = run_dir_arg(args.run_dir, started=True, writable=True, verb="cancel")
    run_config(run_dir)
    return cancel_run(run_dir)


def cmd_probe(args: argparse.Namespace) -> int:
    from health.probe_cli import main as probe_main
    cfg = _config_or_exit(args) if args.config is not None else None
    if args.config is not None and cfg is None:
        return 2
    return int(probe_main(cfg, args.json))


def cmd_plan(args: argparse.Namespace) -> int:
    from orchestrator.plan.cli import main as plan_main
    return int(plan_main(args))


def cmd_alerts(args: argparse.Namespace) -> int:
    from orchestrator.metrics.alerts import rules_text
    sys.stdout.write(rules_text())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from orchestrator.report import report_main
    from orchestrator.report.html import REPORT_DIR
    run_dir = existing_dir(args.run_dir)
    return int(report_main(run_dir, writable_output(run_dir, args.out, f"{REPORT_DIR}/report.html")))


def cmd_compare(args: argparse.Namespace) -> int:
    from orchestrator.report import compare_main
    for arg in (args.run, args.reference):
        if Path(arg).is_dir():
            existing_dir(arg)
    return int(compare_main(args.run, args.reference, args.tolerance, args.json))


def cmd_export_trace(args: argparse.Namespace) -> int:
    from orchestrator.report import export_main
    run_dir = existing_dir(args.run_dir)
    return int(export_main(run_dir, writable_output(run_dir, args.out, "trace.json")))


def cmd_ls(args: argparse.Namespace) -> int:
    from orchestrator.ls import list_runs, rows_json, rows_table
    root = existing_dir(args.dir, what="directory")
    rows = list_runs(root)
    if args.json:
        print(json.dumps(rows_json(rows), indent=1))
    elif not rows:
        print(f"{root}: no runs")
    else:
        Console().print(rows_table(rows, root))
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from orchestrator.dashboard import UID_RE, dashboard_text
    if not UID_RE.match(args.uid):
        raise BadInput(f"--uid {args.uid!r}: use 1-40 letters, digits, '-' or '_' (a Grafana uid)")
    text = dashboard_text(args.title, args.uid)
    if not args.out:
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    if out.is_dir():
        raise BadInput(f"--out {out}: is a directory; give a file name")
    try:
        out.write_text(text)
    except OSError as exc:
        raise BadInput(f"--out {out}: cannot be written ({exc.strerror})") from None
    print(f"dashboard written: {out}", file=sys.stderr)
    return 0
