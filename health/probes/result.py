"""The one result type every probe returns, so the CLI, srun fan-out and the supervisor treat the GPU,
node and collective probes alike (one table, one JSON shape, one exit code rule)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

Verdict = Literal["ok", "degraded", "failed", "skipped"]
_RANK: dict[str, int] = {"skipped": 0, "ok": 1, "degraded": 2, "failed": 3}


@dataclass(frozen=True)
class ProbeResult:
    """What one probe found on one node.

    ``fault_kind`` uses the journal's fault names (``gpu_error``, ``disk_full``, ...) so the supervisor
    can feed a failed probe straight into the policy; it is None when nothing is wrong.
    """

    probe: str
    node: str
    verdict: Verdict
    evidence: dict[str, Any] = field(default_factory=dict)
    fault_kind: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON shape printed by ``--json`` and by ``health.probe_entry`` under srun."""
        return {"probe": self.probe, "node": self.node, "verdict": self.verdict,
                "evidence": self.evidence, "fault_kind": self.fault_kind}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProbeResult:
        """Rebuild a result from another node's JSON (srun collects them as text)."""
        return cls(str(data["probe"]), str(data["node"]), data["verdict"],
                   dict(data.get("evidence") or {}), data.get("fault_kind"))


def worst_verdict(verdicts: Iterable[Verdict]) -> Verdict:
    """Combine sub-checks: the most severe verdict wins, and 'skipped' only if nothing ran."""
    out: Verdict = "skipped"
    for v in verdicts:
        if _RANK[v] > _RANK[out]:
            out = v
    return out


def any_failed(results: Iterable[ProbeResult]) -> bool:
    """The CLI's exit-code rule: degraded is a warning, failed is an error."""
    return any(r.verdict == "failed" for r in results)
