"""A persistent record of which nodes keep failing ("lemons"), shared by all runs of a user.

One bad node can eat a whole restart budget: every relaunch lands on it again. Faults seen by any run
are recorded in one SQLite file (WAL mode, so concurrent supervisors can read while one writes), and a
node with ``fault_threshold`` strikes within ``window_s`` is excluded. Exclusion has hysteresis: it
lasts after the strikes age out, until the node passes a burn-in probe (``mark_burn_in_passed``), so a
node that fails every other day does not flap in and out of the pool.

Strikes: recorded faults, failed probes, and straggler reports at or above ``straggler_strike_score``.
A ``hardware`` verdict of a replay (trainer.replay: the bad step reproduced only on this node) excludes
at once, without waiting for the threshold; the burn-in probe (health.probes.burn_in) re-admits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL, t REAL NOT NULL, category TEXT NOT NULL,  -- fault | probe | straggler | hardware | burn_in
    kind TEXT NOT NULL, score REAL, strike INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_node_t ON events(node, t);
CREATE TABLE IF NOT EXISTS exclusions (node TEXT PRIMARY KEY, since REAL NOT NULL, reason TEXT NOT NULL);
"""


@dataclass(frozen=True)
class NodeEvent:
    t: float
    category: str
    kind: str
    score: float | None
    strike: bool


def default_store_path() -> Path:
    """~/.orchestrator/nodes.db: per user, so every run of that user learns from the others."""
    return Path.home() / ".orchestrator" / "nodes.db"


class LemonNodeStore:
    """Record node faults and decide which nodes to keep out of the next launch."""

    def __init__(self, path: Path, fault_threshold: int = 3, window_s: float = 86_400.0,
                 straggler_strike_score: float = 1.5) -> None:
        self.path = Path(path)
        self.fault_threshold, self.window_s = fault_threshold, window_s
        self.straggler_strike_score = straggler_strike_score
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A short-lived connection per operation: safe across processes and threads, and cheap."""
        db = sqlite3.connect(self.path, timeout=30.0)
        try:
            with db:  # commits, or rolls back on error
                yield db
        finally:
            db.close()

    def _add(self, node: str, t: float, category: str, kind: str, score: float | None,
             strike: bool) -> None:
        with self._db() as db:
            db.execute("INSERT INTO events(node, t, category, kind, score, strike) VALUES (?,?,?,?,?,?)",
                       (node, t, category, kind, score, int(strike)))

    def record_fault(self, node: str, kind: str, t: float) -> None:
        self._add(node, t, "fault", kind, None, True)

    def record_probe(self, node: str, verdict: str, t: float) -> None:
        """Every verdict is kept for history; only 'failed' is a strike."""
        self._add(node, t, "probe", verdict, None, verdict == "failed")

    def record_straggler(self, node: str, score: float, t: float) -> None:
        self._add(node, t, "straggler", "straggler", score, score >= self.straggler_strike_score)

    def record_hardware(self, node: str, kind: str, t: float, reason: str) -> None:
        """A replay found this node computing wrong results (silent data corruption): one such verdict
        is enough; the node is excluded now, until it passes a burn-in probe, however few its strikes."""
        with self._db() as db:
            db.execute("INSERT INTO events(node, t, category, kind, score, strike) VALUES (?,?,?,?,?,1)",
                       (node, t, "hardware", kind, None))
            db.execute("INSERT OR REPLACE INTO exclusions(node, since, reason) VALUES (?,?,?)",
                       (node, t, f"hardware verdict ({kind}): {reason}"))

    def exclusion_reason(self, node: str) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT reason FROM exclusions WHERE node = ?", (node,)).fetchone()
        return None if row is None else str(row[0])

    def mark_burn_in_passed(self, node: str, t: float) -> None:
        """Re-admit a node: lift its exclusion; strikes before ``t`` no longer count."""
        with self._db() as db:
            db.execute("INSERT INTO events(node, t, category, kind, score, strike) VALUES (?,?,?,?,?,0)",
                       (node, t, "burn_in", "passed", None))
            db.execute("DELETE FROM exclusions WHERE node = ?", (node,))

    def nodes_to_exclude(self, now: float) -> list[str]:
        """Nodes excluded before (until burn-in) plus nodes that just reached the threshold."""
        since = now - self.window_s
        with self._db() as db:
            rows = db.execute(
                """SELECT e.node, COUNT(*) FROM events e
                   WHERE e.strike = 1 AND e.t >= ? AND e.t <= ?
                     AND e.t > COALESCE((SELECT MAX(b.t) FROM events b
                                         WHERE b.node = e.node AND b.category = 'burn_in'), -1e300)
                   GROUP BY e.node HAVING COUNT(*) >= ?""",
                (since, now, self.fault_threshold)).fetchall()
            for node, n in rows:
                db.execute("INSERT OR IGNORE INTO exclusions(node, since, reason) VALUES (?,?,?)",
                           (node, now, f"{n} strikes within {self.window_s:.0f}s"))
            excluded = db.execute("SELECT node FROM exclusions ORDER BY node").fetchall()
        return [r[0] for r in excluded]

    def history(self, node: str) -> list[NodeEvent]:
        """Everything recorded about a node, oldest first (for `orchestrator status` and reports)."""
        with self._db() as db:
            rows = db.execute("SELECT t, category, kind, score, strike FROM events WHERE node = ? "
                              "ORDER BY t, id", (node,)).fetchall()
        return [NodeEvent(float(t), c, k, s, bool(st)) for t, c, k, s, st in rows]
