"""A real Prometheus scrapes a MetricsServer, evaluates the shipped rules, and agrees with our /alerts.

This is the end-to-end check that the series names, the label sets and the PromQL in
``orchestrator/alerts.yml`` fit together; it needs the ``prometheus`` binary (Debian package,
``scripts/install-prometheus.sh``) and fails rather than skips under CI=true when it is missing.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from orchestrator.metrics.alerts import RULES_FILE
from orchestrator.metrics.server import MetricsServer
from orchestrator.snapshot import RunSnapshot
from tests.test_alerts_promtool import ensure_prometheus_binary

pytestmark = pytest.mark.prometheus
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(what: str, fn: Callable[[], T | None], timeout_s: float = 60.0) -> T:
    """Call ``fn`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}")


def api(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else base + path
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
        return None


@pytest.fixture
def snap() -> RunSnapshot:
    now = time.time()
    return RunSnapshot(name="promrun", state="RUNNING", step=7, total_steps=100, loss=2.0,
                       heartbeat_age_max_s=0.2, goodput=0.9, started_t=now, last_checkpoint_t=now)


@pytest.fixture
def exporter(snap: RunSnapshot) -> Iterator[MetricsServer]:
    with MetricsServer(lambda: snap, restart_budget=5) as srv:
        yield srv


@pytest.fixture
def prometheus(exporter: MetricsServer, tmp_path: Path) -> Iterator[str]:
    binary = ensure_prometheus_binary("prometheus")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{RULES_FILE}']\n"
        "scrape_configs:\n"
        "  - job_name: orchestrator\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{exporter.port}']}}]\n")
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen([binary, f"--config.file={config}",
                             f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        poll("prometheus to become ready", lambda: proc.poll() is None and _ready(base))
        assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/-/ready", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError):
        return False


def query(base: str, expr: str) -> list[dict[str, Any]]:
    doc = api(base, "/api/v1/query", query=expr)
    return doc["data"]["result"] if doc and doc.get("status") == "success" else []


def prom_firing(base: str) -> set[str]:
    doc = api(base, "/api/v1/alerts")
    alerts = doc["data"]["alerts"] if doc else []
    return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}


def ours_firing(exporter: MetricsServer) -> set[str]:
    doc = api(exporter.url, "/alerts")
    return {a["labels"]["alertname"] for a in doc["data"]["alerts"] if a["state"] == "firing"}


def test_prometheus_scrapes_series_and_fires_our_alerts(
        prometheus: str, exporter: MetricsServer, snap: RunSnapshot) -> None:
    [step] = poll("the step series", lambda: query(prometheus, 'orchestrator_step{run="promrun"}'))
    assert step["value"][1] == "7" and step["metric"]["job"] == "orchestrator"
    target = api(prometheus, "/api/v1/targets")["data"]["activeTargets"][0]
    assert target["health"] == "up", target
    assert prom_firing(prometheus) == set() == ours_firing(exporter)

    snap.loss = math.nan
    snap.excluded_nodes = ["node1"]
    expected = {"NaNLoss", "NodeExcluded"}
    poll("NaNLoss and NodeExcluded firing in prometheus",
         lambda: prom_firing(prometheus) == expected)
    assert ours_firing(exporter) == expected
    [loss] = query(prometheus, 'orchestrator_loss{run="promrun"}')
    assert loss["value"][1] == "NaN"
    assert query(prometheus, "orchestrator_excluded_nodes")[0]["value"][1] == "1"

    snap.loss, snap.excluded_nodes = 1.9, []
    poll("the alerts to resolve", lambda: not prom_firing(prometheus))
    assert ours_firing(exporter) == set()
