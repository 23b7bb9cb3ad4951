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

from slurm.hostlist import compress


def run_probes(nodes: list[str], partition: str | None, run_dir: Path, timeout: float = 120.0) -> list[str]:
    """The nodes (of ``nodes``) whose probe failed or did not answer."""
    if not nodes:
        return []
    argv = ["srun", f"--nodes={len(nodes)}", "--ntasks-per-node=1", f"--nodelist={compress(nodes)}",
            "--label", "--kill-on-bad-exit=0", "--job-name=orch-preflight"]
    if partition:
        argv.append(f"--partition={partition}")
    argv += [sys.executable, "-m", "health.probe_entry", "--json", "--probes", "node",
             "--checkpoint-dir", str(run_dir / "checkpoints")]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout).stdout
    except (OSError, subprocess.TimeoutExpired):
        return list(nodes)
    return failed_nodes(out, sorted(nodes, key=_key))


def _key(name: str) -> tuple[object, ...]:
    from slurm.launcher import node_sort_key
    return node_sort_key(name)


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
