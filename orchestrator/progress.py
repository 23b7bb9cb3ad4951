"""What a person sees while ``submit`` runs: a live rich panel on a terminal, plain lines elsewhere,
and a summary table at the end."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from orchestrator.snapshot import RunSnapshot


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def _eta(s: RunSnapshot) -> str:
    if not s.step or not s.wall_s or s.step >= s.total_steps:
        return "-"
    rate = s.step / max(s.wall_s, 1e-9)
    return f"{(s.total_steps - s.step) / rate:.0f}s"


def progress_table(s: RunSnapshot) -> Table:
    t = Table(title=f"run {s.name}: {s.state}", show_header=False, expand=False)
    t.add_column(style="bold")
    t.add_column()
    recoveries = sum(v for k, v in s.actions.items() if k in ("relaunch", "exclude_node", "rollback"))
    rows = [("step", f"{s.step}/{s.total_steps}"), ("loss", _fmt(s.loss)), ("eval loss", _fmt(s.eval_loss)),
            ("tokens/s", _fmt(s.tokens_per_s, ".0f")), ("elapsed", f"{s.wall_s:.1f}s"), ("ETA", _eta(s)),
            ("faults", str(len(s.faults))), ("recoveries", str(recoveries)),
            ("goodput", _fmt(s.goodput, ".3f") + _predicted(s.predicted_goodput, s.intervals)),
            ("nodes", ", ".join(s.active_nodes) or "-"),
            ("excluded", ", ".join(s.excluded_nodes) or "-")]
    for k, v in rows:
        t.add_row(k, v)
    return t


UNKNOWN = "—"


def _predicted(pred: float | None, intervals: dict[str, int] | None) -> str:
    """Checkpoint intervals on auto: the tuner's predicted goodput and the intervals it chose."""
    if pred is None:
        return ""
    iv = intervals or {}
    return (f" (predicted {pred:.3f} with memory every {iv.get('memory_every_steps', '?')}, "
            f"storage every {iv.get('storage_every_steps', '?')} steps)")


def _cell(x: object) -> str:
    """A table cell: an unknown value (None) reads as a dash, never as "None"."""
    return UNKNOWN if x is None else str(x)


def summary_table(s: RunSnapshot | dict[str, Any]) -> Table:
    d = s.to_dict() if isinstance(s, RunSnapshot) else s
    t = Table(title=f"run {d['name']}: {d['state']}" + (f" ({d['reason']})" if d.get("reason") else ""))
    faults = d["faults"]
    for col in ("kind", "step", "rank", "node", "detected after (s)"):
        t.add_column(col, overflow="fold")
    # The action is what a reader scans for: never cut it ("exclude_no…"); the other columns fold.
    widest = max([len("action")] + [len(str(f.get("action") or "")) for f in faults])
    t.add_column("action", no_wrap=True, min_width=widest)
    t.add_column("lost steps", overflow="fold")
    for f in faults:
        detected = f.get("detected_after_s")
        t.add_row(_cell(f.get("kind")), _cell(f.get("step")), _cell(f.get("rank")), _cell(f.get("node")),
                  UNKNOWN if detected is None else _fmt(detected, ".2f"), _cell(f.get("action")),
                  _cell(f.get("lost_steps")))
    lost = d["lost"]
    t.caption = (f"steps {d['step']}/{d['total_steps']}  eval loss {_fmt(d['eval_loss'])}  "
                 f"goodput {_fmt(d['goodput'], '.3f')}{_predicted(d.get('predicted_goodput'), d.get('intervals'))}"
                 f"  wall {d['wall_s']:.1f}s  restarts {d['restarts']}\n"
                 f"lost: detection {lost['detection']:.1f}s, restart {lost['restart']:.1f}s, "
                 f"recomputation {lost['recomputation']:.1f}s, checkpoint {lost['checkpoint']:.1f}s, "
                 f"straggler {lost.get('straggler', 0.0):.1f}s, replay {lost.get('replay', 0.0):.1f}s, "
                 f"other {lost.get('other', 0.0):.1f}s; "
                 f"excluded nodes: {', '.join(d['excluded_nodes']) or 'none'}")
    return t


class ProgressDisplay:
    """Live panel when stdout is a terminal; one line every ``every_s`` seconds otherwise."""

    def __init__(self, console: Console | None = None, every_s: float = 5.0, quiet: bool = False) -> None:
        self.console = console or Console()
        self.live: Live | None = None
        self.every_s, self.quiet = every_s, quiet
        self._last = 0.0
        self._last_state = ""

    def __enter__(self) -> ProgressDisplay:
        if self.console.is_terminal and not self.quiet:
            self.live = Live(console=self.console, refresh_per_second=4, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def update(self, s: RunSnapshot) -> None:
        if self.live is not None:
            self.live.update(progress_table(s))
            return
        now = time.monotonic()
        if self.quiet or (now - self._last < self.every_s and s.state == self._last_state):
            return
        self._last, self._last_state = now, s.state
        print(f"[{s.state}] step {s.step}/{s.total_steps} loss {_fmt(s.loss)} goodput {_fmt(s.goodput, '.3f')} "
              f"faults {len(s.faults)} restarts {s.restarts}", file=sys.stderr, flush=True)
