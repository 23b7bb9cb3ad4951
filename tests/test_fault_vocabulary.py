"""One vocabulary of faults: the policy, triage, exit classifier, chaos and exporter agree with it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from health.detectors.hardware import _RULES, classify_exit
from spec.config import PolicyConfig
from orchestrator.policy import Situation, decide
from orchestrator.triage import Candidate, root_cause
from spec.faults import CHAOS, FAULTS, Action, spec

AMPLE = Situation(restarts_used=0, spares_left=2, nodes_needed=2, nodes_healthy=2)


def test_spec_sits_at_the_bottom_and_imports_nothing_of_ours() -> None:
    ours = {"orchestrator", "trainer", "health", "slurm", "benchmarks"}
    for path in Path("spec").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not {n.split(".")[0] for n in names} & ours, (path, names)


def test_every_chaos_fault_is_detectable_as_a_known_kind() -> None:
    for c in CHAOS.values():
        assert c.detected_as and c.detected_as <= set(FAULTS), c


@pytest.mark.parametrize("kind", sorted(k for k, f in FAULTS.items() if f.action is not Action.REQUEUE))
def test_policy_default_is_the_vocabulary_action(kind: str) -> None:
    """(A requeue is decided by the launcher's event, never by decide().)"""
    fs = spec(kind)
    d = decide(kind, "node1", PolicyConfig(), AMPLE)
    assert d.action == fs.action.value, (kind, d)
    assert d.exclude_node == (fs.node_bound and fs.action is Action.EXCLUDE_NODE)


@pytest.mark.parametrize("rule", _RULES, ids=lambda r: r.kind)
def test_classifier_only_finds_evidence_its_action_is_the_vocabularys(rule) -> None:  # type: ignore[no-untyped-def]
    assert rule.kind in FAULTS
    text = {"gpu_error": "Xid 79", "oom": "CUDA out of memory", "lustre_error": "LustreError: x",
            "io_error": "Input/output error", "disk_full": "[Errno 28] No space left on device: /ckpt/s",
            "collective_timeout": "Watchdog caught collective operation timeout", "nccl_error": "NCCL error",
            "rank_crash": "device-side assert triggered", "config_error": "cluster.device is cuda but no GPU"}
    fc = classify_exit(1, None, text[rule.kind])
    assert fc.action == spec(fc.kind).action.value


def test_disk_full_means_one_thing() -> None:
    """A full shared checkpoint file system aborts (every relaunch would hit it); a full node-local disk
    excludes the node. Before the vocabulary, the policy called it an in-step alert and ended the run with
    a misleading reason."""
    shared = classify_exit(1, None, "OSError: [Errno 28] No space left on device: '/ckpt/step-20'")
    local = classify_exit(1, None, "OSError: [Errno 28] No space left on device: '/tmp/x'")
    assert (shared.kind, shared.action) == ("disk_full", "abort")
    assert (local.kind, local.action) == ("local_disk_full", "exclude_node")
    assert decide("disk_full", "node0", PolicyConfig(), AMPLE).action == "abort"
    assert decide("local_disk_full", "node0", PolicyConfig(), AMPLE).action == "exclude_node"


def test_triage_orders_by_the_vocabulary_priority() -> None:
    cands = [Candidate("peer_lost", 1.0), Candidate("rank_crash", 2.0), Candidate("node_failure", 3.0, node="n1")]
    assert root_cause(cands).kind == "node_failure"
    assert spec("no_such_kind").action is Action.RELAUNCH  # unknown: treated as a crash, never ignored


def test_exporter_zero_fills_every_kind() -> None:
    from prometheus_client import CollectorRegistry

    from orchestrator.metrics.exporter import SnapshotCollector
    from orchestrator.snapshot import RunSnapshot
    reg = CollectorRegistry()
    snap = RunSnapshot(name="r")
    reg.register(SnapshotCollector(lambda: snap))
    for kind in FAULTS:
        assert reg.get_sample_value("orchestrator_faults_total", {"run": "r", "kind": kind}) == 0.0, kind
