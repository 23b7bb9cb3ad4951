"""When an injected fault really happened: the ground truth a detection latency starts from.

The chaos injector writes one fsynced marker per fault (``RUN_DIR/chaos/fired-<i>``: what, which rank and
node, which step, wall and monotonic time) *before* the fault acts. The supervisor matches each fault it
records to the earliest unclaimed injection that the fault's kind can be the detection of, so
``detected_after_s`` = detected time - injected time, not the supervisor's own estimate of when the fault
began. A fault nobody injected has no match and keeps ``injected_t`` = None.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from spec.faults import CHAOS

# chaos fault -> the fault kinds a correct detection of it may carry (from the fault vocabulary)
DETECTED_AS: dict[str, frozenset[str]] = {name: c.detected_as for name, c in CHAOS.items()}


@dataclass(frozen=True)
class Injection:
    index: int
    fault: str
    step: int | None
    rank: int | None
    node_index: int | None
    t: float
    mono: float | None = None


def _parse(path: Path) -> Injection | None:
    """One marker; None for a marker of an older format or a torn write (it then proves nothing)."""
    try:
        rec = json.loads(path.read_text())
        return Injection(int(rec["index"]), str(rec["fault"]), rec.get("step"), rec.get("rank"),
                         rec.get("node_index"), float(rec["t"]), rec.get("mono"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_injections(run_dir: Path) -> list[Injection]:
    """Every injection recorded in the run directory, oldest first."""
    found = (_parse(p) for p in (run_dir / "chaos").glob("fired-*"))
    return sorted((i for i in found if i is not None), key=lambda i: i.t)


class GroundTruth:
    """Pairs recorded faults with injections, each injection at most once."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.claimed: set[int] = set()

    def match(self, kind: str, detected_t: float) -> Injection | None:
        """The earliest unclaimed injection before ``detected_t`` that ``kind`` can be a detection of.

        Markers are re-read on each call: they are a handful of small files, and a fault is rare.
        """
        for inj in read_injections(self.run_dir):
            if inj.index in self.claimed or inj.t > detected_t:
                continue
            if kind in DETECTED_AS.get(inj.fault, frozenset()):
                self.claimed.add(inj.index)
                return inj
        return None
