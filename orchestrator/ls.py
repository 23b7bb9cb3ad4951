"""``orchestrator ls [DIR]``: every run under a directory, one row each, from the run directories alone.

Why from files only: a listing must work when no supervisor is alive, on a login node, on another
user's runs. It reads status.json (the snapshot) and, when that is missing or torn, falls back to the
journal; anything else in DIR (files, garbage, unreadable directories) is skipped or shown as such,
never a traceback. Nothing is written: the "is a supervisor alive" check takes a shared, non-blocking
flock on supervisor.lock opened read-only.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestrator.journal import JOURNAL_FILE, read_journal
from orchestrator.rundir import CONFIG_FILE, LOCK_FILE
from orchestrator.snapshot import STATUS_FILE

#: a run directory holds at least one of these
MARKERS = (CONFIG_FILE, STATUS_FILE, JOURNAL_FILE)
MAX_DEPTH = 3
NOT_STARTED, UNREADABLE, UNKNOWN = "NOT_STARTED", "UNREADABLE", "UNKNOWN"


@dataclass
class RunRow:
    """One line of the listing; None where the run directory does not say."""

    path: str
    name: str
    state: str
    step: int | None = None
    total_steps: int | None = None
    goodput: float | None = None
    faults: int | None = None
    restarts: int | None = None
    last_change: float | None = None
    supervised: bool | None = None
    note: str = ""


def find_runs(root: Path, max_depth: int = MAX_DEPTH) -> list[Path]:
    """Run directories at or below ``root`` (not below a run: checkpoints live there); no symlinks."""
    if _is_run(root):
        return [root]
    found: list[Path] = []
    stack = [(root, 0)]
    while stack:
        d, depth = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            if e.name.startswith(".") or not e.is_dir(follow_symlinks=False):
                continue
            p = Path(e.path)
            if _is_run(p):
                found.append(p)
            elif depth + 1 < max_depth:
                stack.append((p, depth + 1))
    return sorted(found)


def _is_run(p: Path) -> bool:
    return any((p / m).exists() for m in MARKERS)


def read_row(run: Path, root: Path) -> RunRow:
    """What the run directory says about the run; never raises on bad content."""
    rel = str(run.relative_to(root)) if run != root else run.name or str(run)
    if not os.access(run, os.R_OK | os.X_OK):
        return RunRow(rel, run.name, UNREADABLE, note="no access")
    row = RunRow(rel, run.name, NOT_STARTED, last_change=_last_change(run), supervised=supervised(run))
    status = _status(run)
    if status is not None:
        _fill_from_status(row, status)
    elif (run / JOURNAL_FILE).is_file():
        _fill_from_journal(row, run)
    elif (run / STATUS_FILE).exists() or (run / JOURNAL_FILE).exists():
        regular = all((run / f).is_file() for f in (STATUS_FILE, JOURNAL_FILE) if (run / f).exists())
        row.state, row.note = UNREADABLE, "status.json unreadable" if regular else "not regular files"
    return row


def _status(run: Path) -> dict[str, Any] | None:
    if not (run / STATUS_FILE).is_file():  # missing, or a FIFO that would block the read
        return None
    try:
        doc = json.loads((run / STATUS_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("state"), str) else None


def _fill_from_status(row: RunRow, st: dict[str, Any]) -> None:
    row.name = _str(st.get("name")) or row.name
    row.state = _str(st.get("state")) or UNREADABLE
    row.step, row.total_steps = _int(st.get("step")), _int(st.get("total_steps"))
    row.goodput = _float(st.get("goodput"))
    faults = st.get("faults")
    row.faults = len(faults) if isinstance(faults, list) else None
    row.restarts = _int(st.get("restarts"))


def _fill_from_journal(row: RunRow, run: Path) -> None:
    """No usable status.json: rebuild the little the listing needs from the journal."""
    torn = (run / STATUS_FILE).exists()
    faults, restarts, events = 0, 0, 0
    try:
        for e in read_journal(run):
            events += 1
            row.state = UNKNOWN if row.state == NOT_STARTED else row.state
            ev = e.get("event")
            if ev == "run_start":
                row.name = _str(e.get("name")) or row.name
                row.total_steps = _int(e.get("total_steps"))
            elif ev == "state":
                row.state = _str(e.get("to")) or row.state
            elif ev == "fault":
                faults += 1
            elif ev == "launch" and _int(e.get("attempt")):
                restarts += 1
            elif ev in ("complete", "checkpoint", "eval") and _int(e.get("step")) is not None:
                row.step = _int(e.get("step"))
    except OSError:
        row.note = "journal unreadable"
    row.faults, row.restarts = (faults, restarts) if events else (None, None)
    if torn or events:
        row.note = row.note or ("status.json torn" if torn else "no status.json")


def _last_change(run: Path) -> float | None:
    times = []
    for m in MARKERS:
        try:
            times.append((run / m).stat().st_mtime)
        except OSError:
            continue
    return max(times) if times else None


def supervised(run: Path) -> bool | None:
    """True when a supervisor holds supervisor.lock now; None when that cannot be told."""
    try:
        fd = os.open(run / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # closing drops our shared lock too
    return False


def list_runs(root: Path) -> list[RunRow]:
    return [read_row(r, root) for r in find_runs(root)]


def _str(x: Any) -> str | None:
    return x if isinstance(x, str) and x else None


def _int(x: Any) -> int | None:
    return int(x) if isinstance(x, int | float) and not isinstance(x, bool) and x == x else None


def _float(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) and x == x else None


def ago(t: float | None, now: float) -> str:
    """'42s ago' / '5m ago' / '3h ago' / '2d ago'."""
    if t is None:
        return "—"
    s = max(0.0, now - t)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit} ago"
    return f"{s:.0f}s ago"


def rows_json(rows: list[RunRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


def rows_table(rows: list[RunRow], root: Path, now: float | None = None) -> Any:
    from rich.table import Table
    now = time.time() if now is None else now
    t = Table(title=f"runs under {root}")
    for col in ("run", "state", "step", "goodput", "faults", "restarts", "changed", "note"):
        t.add_column(col, no_wrap=col not in ("run", "note"), overflow="fold")
    for r in rows:
        state = r.state + (" (no supervisor)" if r.state == "RUNNING" and r.supervised is False else "")
        step = "—" if r.step is None else f"{r.step}/{'?' if r.total_steps is None else r.total_steps}"
        t.add_row(r.path, state, step, "—" if r.goodput is None else f"{r.goodput:.3f}",
                  "—" if r.faults is None else str(r.faults), "—" if r.restarts is None else str(r.restarts),
                  ago(r.last_change, now), r.note)
    return t
