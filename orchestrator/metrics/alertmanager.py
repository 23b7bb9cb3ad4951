"""Best-effort push of firing alerts to Alertmanager's ``/api/v2/alerts``.

Why push at all: without a Prometheus in front of us, Alertmanager would never hear about a run in
trouble. Why best effort: monitoring must never take the training down, so every network or HTTP
error is logged and counted, never raised. Alerts that stop firing are sent once more with ``endsAt``
so Alertmanager resolves them instead of waiting for its own timeout.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from datetime import datetime, timezone
from typing import Any

log = logging.getLogger(__name__)


class AlertmanagerPusher:
    """Posts alerts to ``<base_url>/api/v2/alerts``; remembers what it sent to resolve it later."""

    def __init__(self, base_url: str, timeout_s: float = 2.0, generator_url: str = "") -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"alertmanager_url must start with http:// or https://, got {base_url!r}")
        self.url = base_url.rstrip("/") + "/api/v2/alerts"
        self.timeout_s = timeout_s
        self.generator_url = generator_url
        self.failures = 0
        self._sent: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}

    def push(self, firing: list[dict[str, Any]], now: float) -> bool:
        """Send ``firing`` (``/api/v1/alerts``-shaped) plus resolutions; True when Alertmanager took it."""
        payload, current = self._payload(firing, now)
        if not payload:
            return True
        ok = self._post(payload)
        if ok:
            self._sent = current
        return ok

    def _payload(self, firing: list[dict[str, Any]], now: float
                 ) -> tuple[list[dict[str, Any]], dict[tuple[tuple[str, str], ...], dict[str, Any]]]:
        current = {tuple(sorted(a["labels"].items())): a for a in firing}
        out = [{"labels": a["labels"], "annotations": a["annotations"], "startsAt": a["activeAt"],
                "generatorURL": self.generator_url} for a in current.values()]
        ended = _rfc3339(now)
        for key, old in self._sent.items():
            if key not in current:
                out.append({"labels": old["labels"], "annotations": old["annotations"],
                            "startsAt": old["activeAt"], "endsAt": ended,
                            "generatorURL": self.generator_url})
        return out, current

    def _post(self, payload: list[dict[str, Any]]) -> bool:
        req = urllib.request.Request(self.url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310 - URL is config
                return 200 <= resp.status < 300
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self.failures += 1
            log.warning("alertmanager push to %s failed (%s); will retry next interval", self.url, exc)
            return False


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat().replace("+00:00", "Z")
