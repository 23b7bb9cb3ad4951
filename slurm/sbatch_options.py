"""run.yaml's cluster section -> submitit executor parameters and the equivalent sbatch argv.

One mapping, two outputs: :func:`executor_parameters` feeds ``SlurmExecutor.update_parameters`` (the
launcher's path), :func:`sbatch_arguments` is the same request as an argv list for a direct
``subprocess.run(["sbatch", *args, script])``. Nothing here ever goes through a shell: each value is one
argv item, or one ``#SBATCH`` line that submitit quotes with ``shlex.quote`` (sbatch unquotes it, it never
evaluates it). ``extra_sbatch`` items must be single ``--option[=value]`` tokens and may not override an
option that has its own field, so there is one source of truth for each.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from submitit.core.job_environment import JobEnvironment
from submitit.slurm.slurm import SlurmExecutor

from spec.config import RunConfig
from slurm.hostlist import compress, expand

# sbatch options that a structured field (or submitit's own bookkeeping) already sets.
RESERVED_OPTIONS: dict[str, str] = {
    "job-name": "name", "nodes": "cluster.nodes", "ntasks-per-node": "cluster.ranks_per_node",
    "ntasks": "cluster.nodes * cluster.ranks_per_node", "partition": "cluster.slurm.partition",
    "gpus-per-node": "cluster.slurm.gpus_per_node", "cpus-per-task": "cluster.slurm.cpus_per_task",
    "mem": "cluster.slurm.mem", "time": "cluster.slurm.time", "account": "cluster.slurm.account",
    "qos": "cluster.slurm.qos", "constraint": "cluster.slurm.constraint",
    "exclude": "cluster.slurm.exclude", "signal": "cluster.slurm.signal_before_s",
    "output": "the launcher (logs go to the run directory)", "error": "the launcher",
    "open-mode": "the launcher", "array": "the launcher", "wrap": "the launcher",
    "requeue": "cluster.slurm.requeue_on_preemption", "no-requeue": "cluster.slurm.requeue_on_preemption",
}
_OPTION = re.compile(r"--([a-z][a-z0-9-]*)(?:=(.*))?", re.DOTALL)
_SECOND_OPTION = re.compile(r"\s--?[A-Za-z]")
# submitit writes these itself; they have no counterpart in sbatch_arguments().
SUBMITIT_ONLY = frozenset({"output", "error", "open-mode", "wckey"})


class SbatchOptionError(ValueError):
    """An sbatch option from run.yaml that cannot be passed on safely."""


def parse_extra_option(item: str) -> tuple[str, str | None]:
    """``"--reservation=x"`` -> ``("reservation", "x")``; ``"--exclusive"`` -> ``("exclusive", None)``."""
    if any(c in item for c in "\n\r\x00"):
        raise SbatchOptionError(f"extra_sbatch item {item!r} contains a newline or NUL")
    m = _OPTION.fullmatch(item)
    if m is None:
        raise SbatchOptionError(
            f"extra_sbatch item {item!r} is not a single '--option' or '--option=value' "
            "(long form, lower case, one option per list item)")
    name, value = m.group(1), m.group(2)
    if value is not None and _SECOND_OPTION.search(value):
        raise SbatchOptionError(
            f"extra_sbatch item {item!r} looks like more than one option: give a single option "
            "per list item (its value is passed literally, never split)")
    if name in RESERVED_OPTIONS:
        raise SbatchOptionError(
            f"extra_sbatch item {item!r} sets --{name}; use {RESERVED_OPTIONS[name]} instead")
    return name, value


def excluded_nodes(cfg: RunConfig, excluded: Iterable[str] = ()) -> list[str]:
    """cluster.slurm.exclude plus the nodes the supervisor excluded, expanded, first-seen order."""
    out: list[str] = []
    for entry in [*cfg.cluster.slurm.exclude, *excluded]:
        for host in expand(entry):
            if host not in out:
                out.append(host)
    return out


def _optional(cfg: RunConfig) -> dict[str, Any]:
    """The cluster.slurm fields that are only passed when set."""
    s = cfg.cluster.slurm
    values: dict[str, Any] = {
        "partition": s.partition, "cpus_per_task": s.cpus_per_task, "mem": s.mem,
        "account": s.account, "qos": s.qos, "constraint": s.constraint,
        "gpus_per_node": s.gpus_per_node if s.gpus_per_node else None,
    }
    return {k: v for k, v in values.items() if v is not None}


def executor_parameters(cfg: RunConfig, excluded: Sequence[str] = (),
                        job_name: str | None = None) -> dict[str, Any]:
    """kwargs for ``submitit.SlurmExecutor.update_parameters``.

    ``time`` is always present: None makes submitit omit ``--time`` (the partition default applies)
    instead of its own 5-minute default.
    """
    extras = dict(parse_extra_option(item) for item in cfg.cluster.slurm.extra_sbatch)
    params: dict[str, Any] = {
        "job_name": job_name or cfg.name,
        "nodes": cfg.cluster.nodes,
        "ntasks_per_node": cfg.cluster.ranks_per_node,
        "time": cfg.cluster.slurm.time,
        "signal_delay_s": cfg.cluster.slurm.signal_before_s,
        **_optional(cfg),
    }
    nodes = excluded_nodes(cfg, excluded)
    if nodes:
        params["exclude"] = compress(nodes)
    # The orchestrator owns requeue: Slurm must not run a failed attempt again behind its back.
    requeue = "requeue" if cfg.cluster.slurm.requeue_on_preemption else "no-requeue"
    params["additional_parameters"] = {requeue: True, **{k: True if v is None else v for k, v in extras.items()}}
    return params


def auto_executor_parameters(cfg: RunConfig, excluded: Sequence[str] = (),
                             job_name: str | None = None) -> dict[str, Any]:
    """The same request for ``submitit.AutoExecutor.update_parameters`` (``slurm_``-prefixed)."""
    if cfg.cluster.slurm.time is None:
        raise SbatchOptionError(
            "AutoExecutor drops unset values and would impose submitit's 5-minute limit; "
            "set cluster.slurm.time (e.g. '02:00:00') or use SlurmExecutor")
    generic = {"job_name": "name", "nodes": "nodes", "ntasks_per_node": "tasks_per_node",
               "cpus_per_task": "cpus_per_task", "gpus_per_node": "gpus_per_node"}
    params = executor_parameters(cfg, excluded, job_name)
    return {generic.get(k, f"slurm_{k}"): v for k, v in params.items()}


def preempt_signal() -> str:
    """The signal submitit asks Slurm to send before the time limit (``SUBMITIT_PREEMPT_SIGNAL``)."""
    return JobEnvironment.USR_SIG


def _as_argument(key: str, value: Any) -> str:
    return f"--{key.replace('_', '-')}" if value is True else f"--{key.replace('_', '-')}={value}"


def sbatch_arguments(cfg: RunConfig, excluded: Sequence[str] = (),
                     job_name: str | None = None) -> list[str]:
    """The argv (without ``sbatch`` and the script) equivalent to :func:`executor_parameters`."""
    params = executor_parameters(cfg, excluded, job_name)
    extras = params.pop("additional_parameters", {})
    delay = params.pop("signal_delay_s")
    params["signal"] = f"{preempt_signal()}@{delay}"
    args = [_as_argument(k, v) for k, v in sorted(params.items()) if v is not None]
    return args + [_as_argument(k, v) for k, v in extras.items()]


class _ScriptExecutor(SlurmExecutor):
    """A SlurmExecutor that only renders scripts, so this works where ``srun`` is not installed."""

    @classmethod
    def affinity(cls) -> int:
        return 1


def render_sbatch_script(params: dict[str, Any], folder: str | Path, command: str) -> str:
    """The sbatch script submitit would submit for ``params`` (validated by submitit itself)."""
    executor = _ScriptExecutor(folder=folder)
    executor.update_parameters(**params)
    return executor._make_submission_file_text(command, uid="render")
