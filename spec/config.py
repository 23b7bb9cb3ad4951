"""The run.yaml schema: one typed, validated source of truth for a run.

Every section is a pydantic model with ``extra="forbid"`` so a typo fails loudly. Relations between
fields (checkpoint interval against run length, heartbeat against hang timeout, ranks against the
cluster) are checked after the types, and every problem is reported as ``field.path: reason``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from spec.faults import CHAOS_KINDS as FAULT_KINDS  # the chaos faults run.yaml may name
from spec.faults import NET_CHAOS_KINDS as NET_FAULT_KINDS  # only where nodes are namespaced

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Section(BaseModel):
    """Base for every section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SlurmConfig(Section):
    """sbatch options; every value reaches Slurm as one argument, never through a shell."""

    partition: str | None = None
    gpus_per_node: int | None = Field(None, ge=0)
    cpus_per_task: int | None = Field(None, ge=1)
    mem: str | None = None
    time: str | None = Field(None, description="time limit, e.g. 00:30:00")
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclude: list[str] = Field(default_factory=list)
    extra_sbatch: list[str] = Field(default_factory=list,
                                    description="free-form sbatch options, e.g. --reservation=x")
    signal_before_s: int = Field(60, ge=1, description="checkpoint this long before the time limit")
    drain_bad_nodes: bool = False
    poll_interval_s: float = Field(1.0, gt=0)
    recovery: Literal["in_allocation", "resubmit"] = Field(
        "in_allocation", description="in_allocation: one job of nodes + spare_nodes with a warm node agent per "
                                     "node, relaunches fork ranks inside it; resubmit: one sbatch per attempt")
    requeue_on_preemption: bool = Field(
        False, description="let Slurm requeue a preempted job (the requeued job is the same attempt); "
                           "otherwise jobs are submitted --no-requeue and the orchestrator alone relaunches")

    @field_validator("extra_sbatch", "exclude")
    @classmethod
    def _no_newlines(cls, values: list[str]) -> list[str]:
        for v in values:
            if "\n" in v or "\r" in v or "\x00" in v:
                raise ValueError(f"{v!r} contains a newline or NUL; give one option per list item")
        return values

    @field_validator("partition", "mem", "time", "account", "qos", "constraint")
    @classmethod
    def _single_line(cls, v: str | None) -> str | None:
        if v is not None and any(c in v for c in "\n\r\x00"):
            raise ValueError("must be a single line")
        return v


# backend -> its plugin module (exposes ``make_launcher(cfg, run_dir)``): a new backend is its folder, this
# line and its section below (as ``slurm``'s).
BACKEND_PLUGINS = {"local": "orchestrator.launcher.local.plugin", "slurm": "slurm.plugin"}
BACKENDS = tuple(BACKEND_PLUGINS)


class ClusterConfig(Section):
    """Where the ranks run: the embedded local cluster or Slurm."""

    backend: Literal[BACKENDS] = "local"  # type: ignore[valid-type]
    nodes: int = Field(2, ge=1, le=4096)
    ranks_per_node: int = Field(2, ge=1, le=64)
    spare_nodes: int = Field(0, ge=0, le=64)
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when every rank on a host gets a GPU, else CPU; cuda: fail without one")
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node


class ModelConfig(Section):
    """A small GPT-style causal language model."""

    arch: Literal["gpt"] = "gpt"
    vocab_size: int = Field(256, ge=2)
    d_model: int = Field(64, ge=8)
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(4, ge=1)
    d_ff: int | None = Field(None, ge=8, description="MLP width; default 4 * d_model")
    seq_len: int = Field(64, ge=4)

    @property
    def ffn(self) -> int:
        return self.d_ff or 4 * self.d_model


class DataConfig(Section):
    """Real text; the default corpus is the Python standard library's own source files."""

    source: Literal["stdlib", "files"] = "stdlib"
    paths: list[Path] = Field(default_factory=list, description="text files when source=files")
    max_bytes: int = Field(2_000_000, ge=10_000)
    eval_fraction: float = Field(0.1, gt=0, lt=0.5)
    eval_batches: int = Field(4, ge=1)
    seed: int = 0


class ScheduleConfig(Section):
    """Warm-up then decay; decays to zero at the last step unless min_lr says otherwise."""

    warmup_steps: int = Field(10, ge=0)
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr: float = Field(0.0, ge=0)


class TrainConfig(Section):
    steps: int = Field(100, ge=1)
    global_batch: int = Field(8, ge=1, description="samples per optimizer step, over all ranks")
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    seed: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    eval_every: int = Field(0, ge=0, description="0: evaluate only at the end")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    step_sleep_s: float = Field(0.0, ge=0, description="pad each step (simulates a bigger model)")


class MemoryTierConfig(Section):
    """Copies of every rank's shard in its node's RAM (and a partner node's), restored before storage."""

    enabled: bool = Field(False, description="opt-in: the copy blocks only for a tensor copy, but the writer and "
                                             "the replication use CPU beside the step (the 2-core demo's median "
                                             "step went 0.40 s -> 0.89 s at every step)")
    every_steps: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        1, description="'auto': Young/Daly from the measured copy cost and failure rate (orchestrator.interval)")


class CheckpointConfig(Section):
    dir: str = Field("checkpoints", description="relative to the run directory, or absolute")

    @field_validator("dir")
    @classmethod
    def _inside_run_dir(cls, v: str) -> str:
        if not v.strip() or any(c in v for c in "\n\r\x00"):
            raise ValueError("must be a non-empty single-line path")
        if not v.startswith("/") and ".." in v.replace("\\", "/").split("/"):
            raise ValueError("a relative path must stay inside the run directory (no '..'); "
                             "give an absolute path for a shared file system")
        return v
    every_steps: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        20, description="'auto': Young/Daly from the measured save cost and failure rate (orchestrator.interval)")
    keep: int = Field(3, ge=1)
    async_save: bool = False
    memory: MemoryTierConfig = Field(default_factory=MemoryTierConfig)


class StragglerConfig(Section):
    window: int = Field(20, ge=4)
    factor: float = Field(1.4, gt=1.0, description="a rank this many times slower than the others is a "
                                                      "straggler; 1.3x is still caught (halfway threshold)")
    min_steps: int = Field(8, ge=2, description="slow steps within the window before a rank is a straggler")


class HealthConfig(Section):
    heartbeat_interval_s: float = Field(0.5, gt=0)
    hang_timeout_s: float = Field(10.0, gt=0)
    hang_step_multiple: float = Field(5.0, ge=0, description="the hang limit grows to this many times the "
                                      "slowest of the last 20 steps when that is longer than hang_timeout_s "
                                      "(a loaded node or a bigger model steps slower); 0: hang_timeout_s only")
    agent_timeout_s: float | None = Field(None, gt=0, description="a node agent silent this long (it heartbeats "
                                          "every heartbeat_interval_s) is a lost node; default: the larger of "
                                          "5 s and 4 heartbeat intervals")
    agent_gap_multiple: float = Field(4.0, ge=0, description="a node agent counts as lost after this many "
                                      "times its largest recent heartbeat gap (at least 3 heartbeat "
                                      "intervals and 2 s, at most agent_timeout_s; agent_timeout_s in its "
                                      "first seconds and after a launch); 0: agent_timeout_s only")
    preflight: bool = True
    probes: list[Literal["node", "gpu", "collective"]] = Field(default_factory=lambda: ["node", "gpu"])
    straggler: StragglerConfig = Field(default_factory=StragglerConfig)
    startup_timeout_s: float = Field(120.0, gt=0, description="launch to first step")
    collective_timeout_s: float = Field(1800.0, gt=0, description="the process group's timeout (a rank "
                                        "stuck in a collective raises after it); hangs are found from "
                                        "heartbeats long before, this is the last line of defence")
    @property
    def agent_timeout(self) -> float:
        return self.agent_timeout_s or max(5.0, 4 * self.heartbeat_interval_s)

    lemon_nodes: bool | None = Field(None, description="remember troubled nodes across runs; default: on "
                                                       "for Slurm, off for the simulated local nodes")
    lemon_db: str | None = Field(None, description="SQLite file; default: nodes.db beside the run directory")


class SpikeRule(Section):
    """Loss above the running median by k robust standard deviations (MAD * 1.4826)."""

    window: int = Field(20, ge=4)
    k: float = Field(6.0, gt=0)
    warmup_steps: int = Field(20, ge=0)
    min_rel_increase: float = Field(0.1, ge=0, description="and at least this fraction above median")


class ReplayConfig(Section):
    """Replay a step the in-step guard flags (same ranks, another replica, neighbouring batches) to tell
    data, hardware, a transient and the model's own dynamics apart (trainer.replay). Bounded per run."""

    enabled: bool = Field(True, description="off: a flagged step is skipped and its batch skip-listed, "
                                            "whatever caused it")
    max_replays: int = Field(8, ge=0, description="flagged steps replayed per run; later ones are skipped")
    max_seconds: float = Field(120.0, gt=0, description="replay time per run; past it, skip only")
    rel_tol: float = Field(1e-3, ge=0, description="two computations of one batch agree within this "
                                                   "relative difference (deterministic kernels: far tighter)")
    neighbour_batches: int = Field(2, ge=1, description="following batches evaluated with the same weights "
                                                        "to tell bad data from bad dynamics")


class PolicyConfig(Section):
    restart_budget: int = Field(5, ge=0)
    backoff_initial_s: float = Field(0.2, ge=0)
    backoff_max_s: float = Field(10.0, ge=0)
    spike: SpikeRule = Field(default_factory=SpikeRule)
    max_consecutive_bad: int = Field(3, ge=1, description="bad steps in a row before a rollback")
    rollback_skip_batches: int = Field(0, ge=0, description="extra batches skipped after a rollback")
    straggler_action: Literal["alert", "exclude"] = "alert"
    exclude_on_crash: bool = Field(False, description="exclude a node whose rank crashed")
    shrink_on_node_loss: bool = False
    replay: ReplayConfig = Field(default_factory=ReplayConfig)


class ChaosFault(Section):
    """One injected fault; each fires once per run."""

    fault: Literal[FAULT_KINDS]  # type: ignore[valid-type]
    step: int = Field(ge=0)
    rank: int | None = Field(None, ge=0)
    node: int | None = Field(None, ge=0)
    slowdown: float = Field(3.0, gt=1.0)
    steps: int = Field(20, ge=1, description="duration of a straggler, partition or slow_link, in steps")
    rate_kbit: int = Field(1000, ge=8, le=10_000_000, description="slow_link: the link's rate limit")
    attempt: int | None = Field(None, ge=0, description="fire only in this launch attempt (0 is the "
                                                        "first): a fault that hits during recovery")
    target: Literal["output", "grad"] = Field("output", description="sdc: what the faulty node corrupts: "
                                              "each model part's output (the loss shows it) or only its "
                                              "local gradients (the loss stays right)")


class MetricsConfig(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535, description="0 picks a free port")
    allow_public_bind: bool = Field(False, description="needed to bind anything but loopback")
    alertmanager_url: str | None = None
    tensorboard: bool = Field(False, description="TensorBoard scalars and fault/recovery text in RUN_DIR/tensorboard, "
                                                 "written by the supervisor (pip install 'orchestrator[tensorboard]')")


class TelemetryConfig(Section):
    """Where the supervisor listens for the ranks' datagrams (every one is authenticated with the run's key)."""

    bind_host: str | None = Field(None, description="address to bind; default: loopback for the local "
                                                    "backend (its bridge when nodes are namespaced), this "
                                                    "host's cluster address for Slurm")
    advertise_host: str | None = Field(None, description="address the ranks send to; default: bind_host")


class ParallelConfig(Section):
    """Hybrid layout; dp=None means 'whatever is left of the world after tp and pp'."""

    dp: int | None = Field(None, ge=1)
    tp: int = Field(1, ge=1)
    pp: int = Field(1, ge=1)
    sp: bool = False
    pp_schedule: Literal["gpipe", "1f1b", "interleaved_1f1b"] = "1f1b"
    microbatches: int = Field(1, ge=1)
    dp_mode: Literal["fsdp", "ddp", "replicate"] = "ddp"

    def dp_of(self, world: int) -> int:
        """dp as configured, or what the world leaves after tp and pp (0 when tp*pp exceeds it): the one
        derivation the loader, the layout checks, the mesh, the planner and the supervisor share."""
        return self.dp if self.dp is not None else world // (self.tp * self.pp)


class RunConfig(Section):
    name: str = "run"
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    chaos: list[ChaosFault] = Field(default_factory=list)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    #: defaults the loader chose from other fields (e.g. parallel.microbatches), said as warnings
    _chosen_defaults: list[str] = PrivateAttr(default_factory=list)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return v

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
