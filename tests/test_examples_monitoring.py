"""The monitoring examples are accepted by the real tools: promtool (with the generated rules beside
the config) and amtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator.metrics.alerts import rules_text
from tests.test_alerts_promtool import ensure_prometheus_binary

MONITORING = Path(__file__).resolve().parent.parent / "examples" / "monitoring"
pytestmark = pytest.mark.prometheus


def test_prometheus_example_config_checks(tmp_path: Path) -> None:
    shutil.copy(MONITORING / "prometheus.yml", tmp_path / "prometheus.yml")
    (tmp_path / "orchestrator-rules.yml").write_text(rules_text())
    r = subprocess.run([ensure_prometheus_binary("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def test_alertmanager_example_config_checks() -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        ensure_prometheus_binary("prometheus-alertmanager")  # the package ships amtool
        amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool not installed")
    r = subprocess.run([amtool, "check-config", str(MONITORING / "alertmanager.yml")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
