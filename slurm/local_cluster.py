"""Is the Slurm cluster our commands talk to ``slurm/local-cluster.sh``'s, and are its nodes hosts?

Why: chaos ``partition`` and ``slow_link`` take a node's real link down or throttle it. On the namespaced
local cluster that is a test's own network namespace; on a production cluster it would be somebody's
compute node. The script writes ``orch-local-cluster.json`` next to the ``slurm.conf`` it generates; the
cluster counts as local only when that file names the same ClusterName as the ``slurm.conf`` in use
(``SLURM_CONF``, else Slurm's default), so a stray file on a production conf dir does not unlock them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CONF = Path("/etc/slurm/slurm.conf")
MARKER_NAME = "orch-local-cluster.json"


def slurm_conf_path() -> Path:
    return Path(os.environ.get("SLURM_CONF") or DEFAULT_CONF)


def cluster_name(conf: Path) -> str | None:
    """ClusterName of a slurm.conf (case-insensitive key, comments ignored); None if unreadable."""
    try:
        lines = conf.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        key, sep, value = line.split("#", 1)[0].strip().partition("=")
        if sep and key.strip().lower() == "clustername":
            return value.strip()
    return None


@dataclass(frozen=True)
class LocalCluster:
    """What the script wrote: the cluster's name, whether its nodes are namespaced, each node's facts."""

    cluster: str
    netns: bool
    controller_addr: str
    nodes: dict[str, dict[str, str]] = field(default_factory=dict)

    def netif(self, node: str) -> str | None:
        return self.nodes.get(node, {}).get("netif") if self.netns else None


def local_cluster(conf: Path | None = None) -> LocalCluster | None:
    """The local cluster's description, or None when the cluster in use is not the script's."""
    conf = conf or slurm_conf_path()
    try:
        raw = json.loads((conf.parent / MARKER_NAME).read_text())
        lc = LocalCluster(str(raw["cluster"]), bool(raw["netns"]), str(raw.get("controller_addr", "")),
                          {str(k): dict(v) for k, v in dict(raw.get("nodes", {})).items()})
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return lc if lc.cluster == cluster_name(conf) else None


def net_fault_refusal(fault: str) -> str | None:
    """Why ``fault`` (partition, slow_link) must not run on this Slurm cluster; None when it may."""
    conf = slurm_conf_path()
    lc = local_cluster(conf)
    if lc is None:
        return (f"{fault} would cut or throttle a real node's network: on Slurm it runs only on the namespaced "
                f"local cluster (slurm/local-cluster.sh as root), and {conf} is not that cluster's")
    if not lc.netns:
        return (f"{fault} needs the local Slurm cluster's nodes in network namespaces (root, iproute2); "
                f"cluster {lc.cluster} runs every slurmd on one loopback")
    return None
