"""Pre-flight probes on the nodes of the next attempt: one ``health.probe_entry`` per node via srun.

Run before submitting the training job so a node with a full disk or a bad kernel log is excluded up
front instead of costing a failed attempt. A node that prints nothing (srun could not start it) counts
as failed, since it could not run the training either.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from health.probes.result import ProbeResult
from slurm.hostlist import compress, node_sort_key


def run_probes(nodes: list[str], partition: str | None, checkpoint_dir: Path, timeout: float = 120.0,
               probes: str = "node") -> list[str]:
    """The nodes (of ``nodes``) whose probe failed or did not answer; each probes ``checkpoint_dir``."""
    if not nodes:
        return []
    out = _srun(nodes, partition, checkpoint_dir, timeout, probes)
    return list(nodes) if out is None else failed_nodes(out, sorted(nodes, key=node_sort_key))


def burn_in(node: str, partition: str | None, checkpoint_dir: Path, timeout: float = 120.0) -> ProbeResult:
    """The burn-in's known-answer compute check run on ``node`` itself (health.probes.burn_in), as the
    node probe is: a node that cannot run it has not passed it."""
    out = _srun([node], partition, checkpoint_dir, timeout, "burn_in")
    for line in (out or "").splitlines():
        try:
            results = json.loads(line.partition(":")[2])
            return ProbeResult.from_json(next(r for r in results if r.get("probe") == "burn_in"))
        except (ValueError, StopIteration, KeyError, TypeError, AttributeError):
            continue
    return ProbeResult("burn_in", node, "failed", {"reason": "no answer from the node (srun)"}, "sdc")


def _srun(nodes: list[str], partition: str | None, checkpoint_dir: Path, timeout: float, probes: str
          ) -> str | None:
    """``health.probe_entry --json`` on each node (``srun --label``), or None if srun could not run."""
    argv = ["srun", f"--nodes={len(nodes)}", "--ntasks-per-node=1", f"--nodelist={compress(nodes)}",
            "--label", "--kill-on-bad-exit=0", "--job-name=orch-preflight"]
    if partition:
        argv.append(f"--partition={partition}")
    argv += [sys.executable, "-m", "health.probe_entry", "--json", "--probes", probes,
             "--checkpoint-dir", str(checkpoint_dir)]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None


def failed_nodes(labelled: str, ordered: list[str]) -> list[str]:
    """Parse ``srun --label`` output (``<task>: [json]``); task i ran on the i-th node of the list."""
    ok: set[str] = set()
    for line in labelled.splitlines():
        label, _, body = line.partition(":")
        if not label.strip().isdigit() or int(label) >= len(ordered):
            continue
        try:
            results = json.loads(body)
        except json.JSONDecodeError:
            continue
        if isinstance(results, list) and all(r.get("verdict") != "failed" for r in results):
            ok.add(ordered[int(label)])
    return [n for n in ordered if n not in ok]
