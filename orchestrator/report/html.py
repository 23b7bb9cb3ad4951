"""``write_report``: one self-contained HTML file (plots inlined as base64 PNG) plus the PNGs beside it.

Why self-contained: a report is mailed, attached to an incident or opened from an artifact store,
where relative links to images break. The PNGs are also written so they can be pasted elsewhere.
Every string that came from the run directory is HTML-escaped: journal details are free text.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from orchestrator.report import plots
from orchestrator.report.rundir import RunData, load_run

REPORT_DIR = "report"
CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}"
       "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;"
       "text-align:left}th{background:#f3f3f3}img{max-width:100%}h2{margin-top:1.6em}"
       ".fault{color:#b00}code{white-space:pre-wrap;background:#f7f7f7}")
EVENT_COLUMNS = ("time", "event", "step", "kind / action", "rank", "node", "lost steps", "lost s",
                 "detail")


def write_report(run_dir: str | Path, out_html: str | Path | None = None) -> Path:
    """Write the report for ``run_dir``; default ``RUN_DIR/report/report.html``. Returns its path."""
    run = load_run(run_dir)
    out = Path(out_html) if out_html else Path(run_dir) / REPORT_DIR / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, str, Figure | None]] = [
        ("loss", "Loss", plots.loss_figure(run)),
        ("step-time", "Step time per node", plots.heatmap_figure(run)),
        ("goodput", "Goodput", plots.goodput_figure(run)),
    ]
    sections = []
    for slug, title, fig in figures:
        if fig is None:
            sections.append(f"<h2>{title}</h2><p>No data in metrics.jsonl for this plot.</p>")
            continue
        png = plots.to_png(fig)
        (out.parent / f"{out.stem}-{slug}.png").write_bytes(png)
        b64 = base64.b64encode(png).decode()
        sections.append(f'<h2>{title}</h2><img alt="{title}" src="data:image/png;base64,{b64}">')
    out.write_text(_page(run, sections))
    return out


def _page(run: RunData, sections: list[str]) -> str:
    name = html.escape(run.name)
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{name}: run report</title><style>{CSS}</style></head><body>"
            f"<h1>Run report: {name}</h1>{_summary(run)}{''.join(sections)}"
            f"<h2>Faults and actions</h2>{_events_table(run)}{_samples_section(run)}"
            f"<p><small>Generated {time.strftime('%Y-%m-%d %H:%M:%S')} from "
            f"{html.escape(str(run.run_dir))}</small></p></body></html>\n")


def _summary(run: RunData) -> str:
    s = run.status or {}
    last = run.metrics[-1] if run.metrics else {}
    evals = run.eval_points()
    rows = {"state": s.get("state", "unknown"), "reason": s.get("reason") or "",
            "step": f"{s.get('step', last.get('step', '?'))} / {s.get('total_steps', '?')}",
            "last loss": _fmt(last.get("loss")), "last eval loss": _fmt(evals[-1][1] if evals else None),
            "goodput": _fmt(s.get("goodput")), "restarts": s.get("restarts", len(run.of("launch")) - 1),
            "faults": len(run.of("fault")), "excluded nodes": ", ".join(s.get("excluded_nodes", []))}
    if s.get("predicted_goodput") is not None:  # checkpoint intervals on auto: the tuner's expectation
        iv = s.get("intervals") or {}
        rows["predicted goodput"] = (f"{_fmt(s['predicted_goodput'])} (memory every {iv.get('memory_every_steps')}"
                                     f", storage every {iv.get('storage_every_steps')} steps; "
                                     f"{len(run.of('interval'))} interval changes journaled)")
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in rows.items())
    return f"<table>{body}</table>"


def _events_table(run: RunData) -> str:
    events = run.of("fault", "action", "node_excluded", "node_replaced", "checkpoint_bad", "memory_copy_bad",
                    "failed")
    if not events:
        return "<p>No faults: nothing went wrong.</p>"
    start = run.start_t or 0.0
    head = "".join(f"<th>{c}</th>" for c in EVENT_COLUMNS)
    rows = "".join(_event_row(e, start) for e in events)
    return f"<table><tr>{head}</tr>{rows}</table>"


def _event_row(e: dict[str, Any], start: float) -> str:
    ev = str(e.get("event"))
    what = e.get("kind", "") if ev == "fault" else e.get("action") or e.get("reason", "")
    if ev == "action" and e.get("kind"):
        what = f"{what} ({e['kind']})"
    detail = e.get("detail") or e.get("evidence") or e.get("reason") or ""
    cells = [f"+{float(e.get('t', start)) - start:.1f}s", ev, e.get("step", ""), what,
             e.get("rank", ""), e.get("node", ""), e.get("lost_steps", ""), _fmt(e.get("lost_s")),
             detail if isinstance(detail, str) else repr(detail)]
    cls = ' class="fault"' if ev == "fault" else ""
    return f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"


def _samples_section(run: RunData) -> str:
    """Greedy continuations of fixed prompts at each evaluation (``samples`` journal events), so a
    reader sees what the model learned and when it broke; nothing when the run recorded none."""
    rows = []
    for e in run.of("samples"):
        samples = e.get("samples")
        for s in samples if isinstance(samples, list) else []:
            if isinstance(s, dict):
                rows.append((e.get("step", ""), str(s.get("prompt", "")), str(s.get("text", ""))))
    if not rows:
        return ""
    body = "".join(f"<tr><td>{html.escape(str(step))}</td><td><code>{html.escape(prompt)}</code></td>"
                   f"<td><code>{html.escape(text)}</code></td></tr>" for step, prompt, text in rows)
    return (f"<h2>Samples</h2><p>Greedy continuations of fixed prompts at each evaluation.</p>"
            f"<table><tr><th>step</th><th>prompt</th><th>continuation</th></tr>{body}</table>")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
