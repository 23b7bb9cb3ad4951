"""Naming a slow link: the pairwise collective probe, run off the supervisor's thread.

When every rank slows down while compute does not (:mod:`health.detectors.comm_slowdown`), the network is
the suspect, but step times cannot say which link. The collective probe's pairwise ping-pong can: the
pairs that cross the slow link are the slow ones. It takes seconds, so it runs in a background thread
(one at a time) and the supervisor's loop collects the verdict when it is ready; training goes on.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from health.detectors.comm_slowdown import CommSlowdown
from health.probes.result import ProbeResult

ProbeRunner = Callable[[list[str]], list[ProbeResult]]


@dataclass
class LinkVerdict:
    finding: CommSlowdown
    nodes: list[str]  # the attempt's nodes that were probed
    slow_nodes: list[str]  # nodes the probe found degraded; empty: no slow link (a global stall)
    evidence: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class LinkProbe:
    def __init__(self, runner: ProbeRunner | None) -> None:
        """``runner`` probes the given nodes and returns one result per node; None: the backend cannot
        place probe ranks on its nodes (the finding is then journaled without a verdict)."""
        self.runner = runner
        self._done: queue.Queue[LinkVerdict] = queue.Queue()
        self._busy = threading.Event()

    @property
    def available(self) -> bool:
        return self.runner is not None

    def start(self, finding: CommSlowdown, nodes: list[str]) -> bool:
        """Probe ``nodes`` in the background; False if a probe is already running or none is available."""
        if self.runner is None or self._busy.is_set():
            return False
        self._busy.set()
        threading.Thread(target=self._run, args=(finding, list(nodes)), name="link-probe", daemon=True).start()
        return True

    def _run(self, finding: CommSlowdown, nodes: list[str]) -> None:
        assert self.runner is not None
        try:
            results = self.runner(nodes)
            slow = sorted({r.node for r in results if r.verdict != "ok" and r.node in nodes})
            ev = {r.node: r.evidence for r in results if r.probe == "collective"}
            self._done.put(LinkVerdict(finding, nodes, slow, ev))
        except Exception as exc:  # noqa: BLE001 - a failed probe is a verdict to journal, not a crash
            self._done.put(LinkVerdict(finding, nodes, [], {}, f"{type(exc).__name__}: {exc}"))
        finally:
            self._busy.clear()

    def verdicts(self) -> list[LinkVerdict]:
        """Every verdict that arrived since the last call (non-blocking)."""
        out = []
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                return out
