"""A provisionable Grafana dashboard for a run, generated from the exporter's own series names.

Why generated: a hand-written dashboard JSON drifts from the exporter the day a series is renamed and
then shows "No data" without an error. Every query here names its series through :func:`_m`, which
refuses a name the exporter does not list in :data:`~orchestrator.metrics.exporter.SERIES`, so a
rename breaks the build (and the tests), not the dashboard. ``orchestrator dashboard`` prints it;
drop the file into a Grafana file-provisioning directory (README.md has the provider snippet).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from orchestrator.metrics.alerts import RULES
from orchestrator.metrics.exporter import PREFIX, SERIES

UID = "orchestrator-run"
UID_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
RUN = 'run=~"$run"'
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: Prometheus' own series for alert rules; the only non-exporter name a panel may use.
ALERTS_SERIES = "ALERTS"


def _m(name: str, selector: str = RUN) -> str:
    """``orchestrator_<name>{run=~"$run",...}``, refusing a series the exporter does not emit."""
    full = PREFIX + name
    if full not in SERIES:
        raise KeyError(f"{full} is not exported (orchestrator.metrics.exporter.SERIES); fix the dashboard")
    return f"{full}{{{selector}}}"


@dataclass
class Panel:
    """One panel: its queries as (expr, legend), size and unit; turned into Grafana JSON by :func:`build`."""

    title: str
    targets: list[tuple[str, str]]
    kind: str = "timeseries"
    unit: str = "short"
    w: int = 12
    h: int = 8
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    custom: dict[str, Any] = field(default_factory=dict)


def panels() -> list[Panel]:
    """The panels, top to bottom: headline numbers, then training, then reliability."""
    firing = f'{ALERTS_SERIES}{{alertstate="firing",{RUN}}}'
    return [
        Panel("Goodput", [(_m("goodput_ratio"), "{{run}}")], kind="stat", unit="percentunit", w=6, h=4,
              description="Time of the optimizer steps the final model keeps over wall time (ETTR)."),
        Panel("Step", [(_m("step"), "step {{run}}"), (_m("total_steps"), "of {{run}}")], kind="stat", w=6, h=4),
        Panel("State", [(f'{_m("run_state")} == 1', "{{state}}")], kind="stat", w=6, h=4,
              options={"textMode": "name"}),
        Panel("Alerts firing", [(firing, "{{alertname}}")], kind="stat", w=6, h=4,
              description="Alerts from `orchestrator alerts rules`, as Prometheus evaluates them."),
        Panel("Loss and eval loss", [(_m("loss"), "loss {{run}}"), (_m("eval_loss"), "eval loss {{run}}")],
              description="Fault annotations mark when a fault was recorded."),
        Panel("Goodput and lost time by cause",
              [(_m("goodput_ratio"), "goodput {{run}}"),
               (_m("lost_seconds_total"), "lost {{cause}} (s)"),
               (_m("productive_seconds"), "productive (s)")],
              description="Lost wall time split into detection, restart, recomputation and checkpoint."),
        Panel("Step time per node", [(_m("node_step_time_seconds"), "{{node}}"),
                                     (_m("step_time_median_seconds"), "median rank")], unit="s",
              description="Each node's slowest rank, last step; a straggler stands out here."),
        Panel("Throughput", [(_m("tokens_per_second"), "tokens/s {{run}}")]),
        Panel("Restarts and faults", [(_m("restarts_total"), "restarts"), (_m("restart_budget"), "budget"),
                                      (_m("faults_total"), "faults {{kind}}")], w=8),
        Panel("Recovery actions", [(_m("actions_total"), "{{action}}")], w=8),
        Panel("Excluded nodes", [(_m("excluded_nodes"), "excluded {{run}}")], w=8),
        Panel("Checkpoint age", [(_m("checkpoint_age_seconds"), "age {{run}}")], unit="s", w=8,
              description="Seconds since the last committed checkpoint: work at risk on a failure."),
        Panel("Last checkpoint step", [(_m("last_checkpoint_step"), "step {{run}}")], w=8),
        Panel("Heartbeat age (stalest rank)", [(_m("heartbeat_age_max_seconds"), "{{run}}")], unit="s", w=8),
        Panel("Alerts firing over time", [(firing, "{{alertname}}")], w=24,
              custom={"drawStyle": "bars", "fillOpacity": 60}),
    ]


def fault_annotations() -> list[dict[str, Any]]:
    """Faults and restarts as annotations on every time panel (query: a counter that just moved)."""
    return [_annotation("Faults", f'changes({_m("faults_total")}[1m]) > 0', "fault: {{kind}}", "red"),
            _annotation("Restarts", f'changes({_m("restarts_total")}[1m]) > 0', "restart", "orange")]


def _annotation(name: str, expr: str, title: str, color: str) -> dict[str, Any]:
    return {"name": name, "datasource": DATASOURCE, "enable": True, "iconColor": color, "expr": expr,
            "step": "15s", "titleFormat": title, "tagKeys": "run", "useValueForTime": False}


def _panel_json(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": p.unit}
    if p.custom:
        defaults["custom"] = p.custom
    return {"id": pid, "type": p.kind, "title": p.title, "description": p.description,
            "datasource": DATASOURCE, "gridPos": {"x": x, "y": y, "w": p.w, "h": p.h},
            "fieldConfig": {"defaults": defaults, "overrides": []}, "options": p.options,
            "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend, "datasource": DATASOURCE}
                        for i, (expr, legend) in enumerate(p.targets)]}


def _layout(ps: list[Panel]) -> list[dict[str, Any]]:
    """Left to right, wrapping at Grafana's 24 columns."""
    out, x, y, row_h = [], 0, 0, 0
    for pid, p in enumerate(ps, start=1):
        if x + p.w > 24:
            x, y, row_h = 0, y + row_h, 0
        out.append(_panel_json(p, pid, x, y))
        x, row_h = x + p.w, max(row_h, p.h)
    return out


def _variables() -> list[dict[str, Any]]:
    return [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus",
         "current": {}, "hide": 0},
        {"name": "run", "type": "query", "label": "run", "datasource": DATASOURCE,
         "query": {"query": f"label_values({PREFIX}step, run)", "refId": "run"},
         "definition": f"label_values({PREFIX}step, run)", "refresh": 2, "includeAll": True, "multi": True,
         "allValue": ".*", "current": {"text": "All", "value": "$__all"}, "sort": 1},
    ]


def build(title: str = "orchestrator run", uid: str = UID) -> dict[str, Any]:
    """The dashboard JSON model (Grafana 9+, file provisioning or import)."""
    return {
        "uid": uid, "title": title, "tags": ["orchestrator", "training"], "timezone": "browser",
        "schemaVersion": 39, "version": 1, "editable": True, "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "description": "Generated by `orchestrator dashboard` from the exporter's series; alert names: "
                       + ", ".join(r.name for r in RULES),
        "templating": {"list": _variables()},
        "annotations": {"list": [{"builtIn": 1, "name": "Annotations & Alerts", "type": "dashboard",
                                  "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)"},
                                 *fault_annotations()]},
        "panels": _layout(panels()),
    }


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) for every panel target and annotation: what a test runs against Prometheus."""
    out = [(f"panel {p['title']!r} {t['refId']}", t["expr"]) for p in dashboard["panels"] for t in p["targets"]]
    out += [(f"annotation {a['name']!r}", a["expr"]) for a in dashboard["annotations"]["list"] if "expr" in a]
    return out


def series_named(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (ours and ALERTS)."""
    return set(re.findall(rf"\b({PREFIX}[a-z_]+|{ALERTS_SERIES})\{{", expr))


def dashboard_text(title: str = "orchestrator run", uid: str = UID) -> str:
    return json.dumps(build(title, uid), indent=1) + "\n"
