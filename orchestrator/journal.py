"""The run journal: an append-only JSON-lines file, fsynced per event, that survives any crash.

Every fault, action, launch, checkpoint and state change is one line. A line torn by a crash in the
middle of a write is skipped on read (it was never acknowledged), every complete line is kept.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

JOURNAL_FILE = "journal.jsonl"


class Journal:
    """Appends events to ``RUN_DIR/journal.jsonl``; ``append`` returns only once the line is on disk."""

    def __init__(self, run_dir: str | Path, clock: Any = time.time) -> None:
        self.path = Path(run_dir) / JOURNAL_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.Lock()
        self._repair_torn_tail()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._seq = sum(1 for _ in read_journal(self.path))

    def _repair_torn_tail(self) -> None:
        """A crash can leave a last line without its newline; end it so the next event starts clean."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Record one event durably and return it (with its sequence number and time)."""
        with self._lock:
            record = {"seq": self._seq, "t": round(self._clock(), 6), "event": event, **fields}
            line = (json.dumps(record, default=str, separators=(",", ":")) + "\n").encode()
            os.write(self._fd, line)
            os.fsync(self._fd)
            self._seq += 1
        return record

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_journal(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield every complete event; a torn or garbled line (a crash mid-write) is skipped."""
    p = Path(path)
    if p.is_dir():
        p = p / JOURNAL_FILE
    if not p.exists():
        return
    with p.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                return
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(rec, dict) and "event" in rec:
                yield rec
