"""run.yaml -> submitit parameters / sbatch argv (slurm.sbatch_options), with a golden sbatch script."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import pytest

from spec.config import RunConfig
from slurm.sbatch_options import (
    SUBMITIT_ONLY, SbatchOptionError, auto_executor_parameters, excluded_nodes, executor_parameters,
    parse_extra_option, render_sbatch_script, sbatch_arguments,
)

GOLDEN = Path(__file__).parent / "golden" / "demo_sbatch.sh"
HOSTILE = "$(touch /tmp/orch-pwned); `id` | x & y > z 'q' \"d\""


def make_cfg(**slurm: Any) -> RunConfig:
    return RunConfig.model_validate({"name": "demo", "cluster": {
        "backend": "slurm", "nodes": 2, "ranks_per_node": 2, "slurm": slurm}})


def demo_cfg() -> RunConfig:
    return make_cfg(partition="main", time="00:30:00", mem="4G", cpus_per_task=2, account="ml",
                    qos="high", constraint="fast", exclude=["node[7-8]"], signal_before_s=45,
                    extra_sbatch=["--reservation=maint", "--exclusive"])


def sbatch_lines(script: str) -> dict[str, str | bool]:
    """The #SBATCH options as sbatch reads them (it unquotes like a shell, never evaluates)."""
    out: dict[str, str | bool] = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH "):
            (token,) = shlex.split(line[len("#SBATCH "):])
            key, eq, value = token[2:].partition("=")
            out[key] = value if eq else True
    return out


def test_parameters_map_every_field() -> None:
    params = executor_parameters(demo_cfg(), excluded=["node2", "node3"], job_name="demo-a1")
    assert params == {
        "job_name": "demo-a1", "nodes": 2, "ntasks_per_node": 2, "time": "00:30:00",
        "signal_delay_s": 45, "partition": "main", "cpus_per_task": 2, "mem": "4G", "account": "ml",
        "qos": "high", "constraint": "fast", "exclude": "node[2-3,7-8]",
        "additional_parameters": {"no-requeue": True, "reservation": "maint", "exclusive": True}}


def test_orchestrator_owns_requeue() -> None:
    """--no-requeue unless requeue-on-preemption is asked for; extra_sbatch cannot override it."""
    assert sbatch_arguments(make_cfg())[-1] == "--no-requeue"
    assert "--requeue" in sbatch_arguments(make_cfg(requeue_on_preemption=True))
    assert "--no-requeue" not in sbatch_arguments(make_cfg(requeue_on_preemption=True))
    for item in ("--requeue", "--no-requeue"):
        with pytest.raises(SbatchOptionError, match="requeue_on_preemption"):
            parse_extra_option(item)


def test_unset_fields_stay_unset() -> None:
    params = executor_parameters(make_cfg(gpus_per_node=0))
    assert params["time"] is None  # not submitit's 5 minutes: the partition default applies
    assert "gpus_per_node" not in params and "exclude" not in params
    assert "--time" not in " ".join(sbatch_arguments(make_cfg()))
    assert "#SBATCH --time" not in render_sbatch_script(params, "/runs/demo/slurm", "true")


def test_excluded_nodes_merge_and_dedupe() -> None:
    cfg = make_cfg(exclude=["node[1-2]", "gpu5"])
    assert excluded_nodes(cfg, ["node2", "node9"]) == ["node1", "node2", "gpu5", "node9"]


def test_sbatch_arguments_equal_the_script() -> None:
    cfg = demo_cfg()
    args = sbatch_arguments(cfg, ["node2"])
    assert args[-2:] == ["--reservation=maint", "--exclusive"]
    script = render_sbatch_script(executor_parameters(cfg, ["node2"]), "/runs/demo/slurm", "true")
    from_script = {k: v for k, v in sbatch_lines(script).items() if k not in SUBMITIT_ONLY}
    from_args = {a[2:].partition("=")[0]: (a.partition("=")[2] if "=" in a else True) for a in args}
    assert from_script == from_args


def test_golden_sbatch_script() -> None:
    """Regenerate with ORCH_UPDATE_GOLDEN=1 after a deliberate change, and review the diff."""
    params = executor_parameters(demo_cfg(), excluded=["node2", "node3"], job_name="demo-a1")
    script = render_sbatch_script(params, "/runs/demo/slurm", "/venv/bin/python -u -m trainer.main")
    if os.environ.get("ORCH_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(script)
    assert script == GOLDEN.read_text()


def test_shell_metacharacters_stay_literal() -> None:
    cfg = make_cfg(account=HOSTILE, extra_sbatch=[f"--comment={HOSTILE}"], exclude=["node1"])
    args = sbatch_arguments(cfg)
    assert f"--account={HOSTILE}" in args and f"--comment={HOSTILE}" in args
    script = render_sbatch_script(executor_parameters(cfg), "/runs/demo/slurm", "true")
    options = sbatch_lines(script)
    assert options["account"] == HOSTILE and options["comment"] == HOSTILE
    # Nothing outside the #SBATCH lines mentions the values: they never reach the shell part.
    body = [ln for ln in script.splitlines() if not ln.startswith("#")]
    assert not any("orch-pwned" in ln for ln in body)


@pytest.mark.parametrize("item, parsed", [
    ("--reservation=maint", ("reservation", "maint")),
    ("--exclusive", ("exclusive", None)),
    ("--comment=a=b c", ("comment", "a=b c")),
    ("--mail-type=END", ("mail-type", "END")),
])
def test_extra_option_accepted(item: str, parsed: tuple[str, str | None]) -> None:
    assert parse_extra_option(item) == parsed


@pytest.mark.parametrize("item, why", [
    ("-p main", "single"), ("reservation=x", "single"), ("--reservation x", "single"),
    ("--reservation=x --qos=y", "single option"), ("--comment=a -p b", "single option"), ("--Reservation=x", "single"), ("--", "single"),
    ("--comment=a\nb", "newline"), ("--comment=a\x00", "newline"),
    ("--time=01:00:00", "cluster.slurm.time"), ("--exclude=node1", "cluster.slurm.exclude"),
    ("--nodes=3", "cluster.nodes"), ("--output=/tmp/x", "launcher"), ("--signal=B:USR1@9", "signal_before_s"),
])
def test_extra_option_rejected(item: str, why: str) -> None:
    with pytest.raises(SbatchOptionError, match=why):
        parse_extra_option(item)


def test_bad_extra_option_fails_the_whole_mapping() -> None:
    cfg = make_cfg(extra_sbatch=["--partition=other"])
    with pytest.raises(SbatchOptionError, match="cluster.slurm.partition"):
        executor_parameters(cfg)


def test_auto_executor_parameters() -> None:
    params = auto_executor_parameters(demo_cfg(), ["node2"])
    assert params["name"] == "demo" and params["nodes"] == 2 and params["tasks_per_node"] == 2
    assert params["cpus_per_task"] == 2 and params["slurm_partition"] == "main"
    assert params["slurm_time"] == "00:30:00" and params["slurm_exclude"] == "node[2,7-8]"
    with pytest.raises(SbatchOptionError, match="cluster.slurm.time"):
        auto_executor_parameters(make_cfg())


def test_auto_executor_accepts_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """submitit itself validates the names (it raises on any unknown parameter)."""
    import submitit
    from submitit.slurm.slurm import SlurmExecutor
    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    executor.update_parameters(**auto_executor_parameters(demo_cfg(), ["node2"]))
    inner = executor._executor
    assert isinstance(inner, SlurmExecutor)
    script = inner._make_submission_file_text("true", uid="x")
    assert "#SBATCH --exclude='node[2,7-8]'" in script and "#SBATCH --ntasks-per-node=2" in script
