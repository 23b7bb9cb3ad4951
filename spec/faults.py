"""The one vocabulary of faults: every kind with its triage priority, whether it follows a node, its
default action, the alert that fires for it and the advice a user gets.

This module sits at the bottom of the dependency graph (it imports nothing of ours): the policy, the
root-cause triage, the exit classifier (which only finds evidence), the chaos injector, the metrics
exporter and the ground-truth matcher all read it, so a new fault kind is one entry here, not a string
added to eight files that then disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Action(str, Enum):
    SKIP_STEP = "skip_step"
    ROLLBACK = "rollback"
    FALLBACK_CHECKPOINT = "fallback_checkpoint"
    ALERT = "alert"
    RELAUNCH = "relaunch"
    EXCLUDE_NODE = "exclude_node"
    REQUEUE = "requeue"
    ABORT = "abort"
    APPLY_CLEAN = "apply_clean"  # a replay did not reproduce the bad step: its clean result is applied


@dataclass(frozen=True)
class FaultSpec:
    kind: str
    priority: int  # triage: when several candidates arrive together, the lowest is the root cause
    node_bound: bool  # the fault follows the node: relaunching on it would hit it again
    action: Action  # what to do by default (the policy may escalate: budget, spares, repeated crashes)
    alert: str | None  # the Prometheus alert that fires for it, if any
    advice: str
    in_step: bool = False  # handled by the trainer inside the step; the run goes on without a relaunch


def _f(kind: str, priority: int, node_bound: bool, action: Action, alert: str | None, advice: str,
       in_step: bool = False) -> FaultSpec:
    return FaultSpec(kind, priority, node_bound, action, alert, advice, in_step)


A = Action
FAULTS: dict[str, FaultSpec] = {f.kind: f for f in (
    _f("node_failure", 0, True, A.EXCLUDE_NODE, "NodeExcluded",
       "the node vanished (its agent or slurmd stopped answering); it is excluded and a spare takes over"),
    _f("gpu_error", 1, True, A.EXCLUDE_NODE, "NodeExcluded",
       "the GPU reported a hardware fault; drain the node and check it (nvidia-smi -q, dmesg for Xid)"),
    _f("io_error", 1, True, A.EXCLUDE_NODE, "NodeExcluded",
       "an I/O error on this node (local disk or file-system client); exclude it and check dmesg"),
    _f("lustre_error", 1, True, A.EXCLUDE_NODE, "NodeExcluded",
       "this node lost its Lustre client connection; exclude it and check `lctl dl` / dmesg"),
    _f("local_disk_full", 1, True, A.EXCLUDE_NODE, "NodeExcluded",
       "a node-local disk (/tmp, /dev/shm, local scratch) is full on this node; exclude it and clean it up"),
    _f("sdc", 1, True, A.EXCLUDE_NODE, "NodeExcluded",
       "silent data corruption: the bad step reproduced only on this node (replayed elsewhere it was "
       "clean); it is excluded and kept out of later runs until a burn-in probe passes"),
    _f("probe_failed", 1, True, A.EXCLUDE_NODE, "NodeExcluded",
       "a health probe failed on this node before launch; it stays out until a burn-in probe passes"),
    _f("oom", 1, False, A.ABORT, "RunFailed",
       "the job needs more memory than a device/node has; reduce the micro-batch size, enable activation "
       "checkpointing, or shard more (fsdp / tp); relaunching as is fails the same way"),
    _f("config_error", 1, False, A.ABORT, "RunFailed",
       "the run asked for something this node cannot give; fix the node or the config, then resubmit"),
    _f("disk_full", 1, False, A.ABORT, "RunFailed",
       "the checkpoint file system is full or over quota; free space, lower checkpoint.keep, or point "
       "checkpoint.dir elsewhere, then resume"),
    _f("collective_timeout", 2, False, A.RELAUNCH, "RestartLoop",
       "a collective timed out, usually because another rank died or hung first; look at the first "
       "rank to fail"),
    _f("nccl_error", 2, False, A.RELAUNCH, "RestartLoop",
       "a communication error; relaunching usually clears it, repeated ones point at the network"),
    _f("rank_crash", 3, False, A.RELAUNCH, "RestartLoop",
       "the rank crashed; its log has the traceback (a node whose ranks keep crashing is excluded)"),
    _f("hang", 4, False, A.RELAUNCH, "TrainingStalled",
       "alive but no progress; the stuck rank is named from its stack dump"),
    _f("silent", 4, False, A.RELAUNCH, "TrainingStalled",
       "every rank went quiet without exiting; the scheduler is asked which node failed"),
    _f("straggler", 5, True, A.ALERT, "StragglerDetected",
       "one rank is persistently slower than its peers; policy.straggler_action: exclude moves it off "
       "the node"),
    _f("slow_link", 5, True, A.ALERT, "StragglerDetected",
       "every rank slowed while compute did not: a slow network link; the pairwise probe names its nodes"),
    _f("peer_lost", 9, False, A.RELAUNCH, None,
       "a rank lost its peers (a consequence, not a cause); the root cause is another candidate"),
    _f("preempted", 6, False, A.REQUEUE, None,
       "time limit or preemption after a checkpoint; resubmitted without spending restart budget"),
    _f("nan", 7, False, A.SKIP_STEP, "NaNLoss",
       "a non-finite loss or gradient skipped without a replay (policy.replay off, its budget spent, or "
       "fp16): the step was skipped and its batch put on the skip list", True),
    _f("loss_spike", 7, False, A.SKIP_STEP, "LossSpike",
       "the loss jumped far above its recent median and was not replayed (policy.replay off, its budget "
       "spent, or fp16); the step was skipped", True),
    _f("bad_data", 7, False, A.SKIP_STEP, "LossSpike",
       "the batch is bad on any hardware (replayed on another node, same result; neighbouring batches "
       "fine): skipped, its samples are in the journal's replay line", True),
    _f("transient_fault", 7, False, A.APPLY_CLEAN, "TransientFault",
       "the bad step did not reproduce when replayed: the clean result was applied and the event counted "
       "against the node (repeated ones make it a lemon)", True),
    _f("dynamics", 7, False, A.ALERT, "LossSpike",
       "the replay agrees the loss really is that high, on neighbouring batches too: the model, not the "
       "data or a node; training goes on and the rollback policy acts if it persists", True),
    _f("divergence", 7, False, A.ROLLBACK, "LossSpike",
       "several bad steps in a row: every rank rolled back to the last good checkpoint", True),
    _f("checkpoint_error", 7, False, A.ALERT, "CheckpointStale",
       "a checkpoint could not be written; training goes on from the last good one", True),
    _f("checkpoint_bad", 7, False, A.FALLBACK_CHECKPOINT, None,
       "a checkpoint failed its checksum at load; it is marked BAD and the previous one used", True),
    _f("precision_mismatch", 7, False, A.ALERT, None,
       "the checkpoint's dtypes differ from the run's precision; check train.precision", True),
)}

UNKNOWN = _f("unknown", 3, False, A.RELAUNCH, "RestartLoop", "an unclassified failure; see the rank logs")


def spec(kind: str) -> FaultSpec:
    """The spec of ``kind``; an unknown kind is treated like a crash (relaunch), never silently ignored."""
    return FAULTS.get(kind, UNKNOWN)


@dataclass(frozen=True)
class ChaosSpec:
    """A fault the chaos injector can cause, and the kinds a correct detection of it may carry."""

    name: str
    detected_as: frozenset[str]
    network: bool = False  # acts on a node's link: only where nodes are namespaced
    verdict: str | None = None  # the replay verdict a correct detection carries (policy.replay on)


def _c(name: str, *kinds: str, network: bool = False, verdict: str | None = None) -> ChaosSpec:
    return ChaosSpec(name, frozenset(kinds), network, verdict)


CHAOS: dict[str, ChaosSpec] = {c.name: c for c in (
    # One rank's one-off NaN is what a transient hardware glitch looks like: its replay is clean (a NaN
    # that comes from the batch is bad_batch's). nan/loss_spike: the kinds when replay is off.
    _c("nan", "transient_fault", "nan", verdict="transient"),
    _c("loss_spike", "transient_fault", "loss_spike", "divergence", verdict="transient"),  # a corrupted read
    _c("rank_crash", "rank_crash"),
    _c("node_failure", "node_failure", "silent", "hang"),
    _c("hang", "hang", "silent"),
    _c("straggler", "straggler"),
    _c("ckpt_crash", "rank_crash"),
    _c("disk_full", "disk_full", "checkpoint_error"),
    _c("gpu_error", "gpu_error"),
    _c("collective_timeout", "collective_timeout"),
    _c("partition", "node_failure", "silent", "hang", network=True),
    _c("slow_link", "straggler", "slow_link", network=True),
    _c("sdc", "sdc", verdict="hardware"),  # a faulty GPU: its node corrupts what it computes
    _c("bad_batch", "bad_data", "loss_spike", "nan", "divergence", verdict="data"),
    _c("diverge", "dynamics", "divergence", "loss_spike", verdict="dynamics"),  # the model itself goes bad
)}

VERDICT_KIND: dict[str, str] = {"data": "bad_data", "transient": "transient_fault", "hardware": "sdc",
                                "dynamics": "dynamics"}  # a replay verdict → the fault kind it records
CHAOS_KINDS: tuple[str, ...] = tuple(CHAOS)
NET_CHAOS_KINDS: tuple[str, ...] = tuple(c.name for c in CHAOS.values() if c.network)
