"""A small HTTP endpoint: ``/metrics`` (Prometheus text), ``/alerts`` (JSON), ``/healthz``.

Why not ``prometheus_client.start_http_server``: we also serve alerts, must refuse public binds unless
asked (the metrics reveal the run's layout), and must bound what a client can make us read. The server
is the standard library's threaded HTTP server with a strict handler: GET/HEAD on three paths, request
line and headers capped at a few KiB (414 / 431), a socket timeout so idle clients cannot pin threads,
HTTP/1.0 so every connection closes after its response.
"""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from orchestrator.metrics.alertmanager import AlertmanagerPusher
from orchestrator.metrics.alerts import AlertTracker, Limits
from orchestrator.metrics.exporter import SnapshotCollector
from orchestrator.snapshot import RunSnapshot

log = logging.getLogger(__name__)

MAX_REQUEST_LINE = 4096
MAX_HEADER_BYTES = 8192
MAX_HEADERS = 64


def is_loopback(host: str) -> bool:
    """True when every address ``host`` resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    addrs = {str(info[4][0]) for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


class _Handler(BaseHTTPRequestHandler):
    """Routes three paths; everything about the request is size-checked before it is parsed."""

    server: _Server
    timeout = 5.0
    server_version = "orchestrator-metrics"
    sys_version = ""

    def handle_one_request(self) -> None:
        try:
            line = self.rfile.readline(MAX_REQUEST_LINE + 1)
            if not line:
                self.close_connection = True
                return
            self.raw_requestline = line
            if len(line) > MAX_REQUEST_LINE:
                self._too_large(414, "request line over %d bytes" % MAX_REQUEST_LINE)
                return
            if not self._read_bounded_headers():
                return
            if not self.parse_request():
                return
            method = getattr(self, "do_" + self.command, None)
            if method is None:
                self.send_error(405, "only GET and HEAD")
                return
            method()
            self.wfile.flush()
        except (TimeoutError, ConnectionError):
            self.close_connection = True

    def _read_bounded_headers(self) -> bool:
        """Pre-read the header block with limits, then let parse_request() parse it from memory."""
        block = bytearray()
        for _ in range(MAX_HEADERS + 1):
            line = self.rfile.readline(MAX_HEADER_BYTES + 1)
            block += line
            if len(block) > MAX_HEADER_BYTES:
                self._too_large(431, "headers over %d bytes" % MAX_HEADER_BYTES)
                return False
            if line in (b"\r\n", b"\n", b""):
                self.rfile = io.BytesIO(bytes(block))
                return True
        self._too_large(431, "more than %d headers" % MAX_HEADERS)
        return False

    def _too_large(self, code: int, why: str) -> None:
        self.requestline, self.request_version, self.command = "", "HTTP/1.0", "GET"
        self.close_connection = True
        self.send_error(code, why)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        path = self.path.split("?", 1)[0]
        route = {"/metrics": self.server.owner.render_metrics,
                 "/alerts": self.server.owner.render_alerts,
                 "/healthz": lambda: (b"ok\n", "text/plain; charset=utf-8")}.get(path)
        if route is None:
            self.send_error(404, "try /metrics, /alerts or /healthz")
            return
        try:
            body, ctype = route()
        except Exception as exc:  # the snapshot callable is the supervisor's: never let it kill us
            log.exception("rendering %s failed", path)
            self.send_error(500, f"{type(exc).__name__}")
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], owner: MetricsServer) -> None:
        self.owner = owner
        self.address_family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        super().__init__(addr, _Handler)


class MetricsServer:
    """Serves a run's metrics and alerts over HTTP from a ``snapshot`` callable.

    Binds to loopback unless ``allow_public=True`` (``metrics.allow_public_bind``); ``port=0`` picks a
    free port, read it back from :attr:`port` after :meth:`start`. With ``alertmanager_url`` a
    background thread evaluates the rules every ``push_interval_s`` and pushes firing alerts.
    """

    def __init__(self, snapshot: Callable[[], RunSnapshot], host: str = "127.0.0.1", port: int = 0,
                 *, allow_public: bool = False, alertmanager_url: str | None = None,
                 restart_budget: int | None = None, clock: Callable[[], float] = time.time,
                 push_interval_s: float = 15.0) -> None:
        if not allow_public and not is_loopback(host):
            raise ValueError(f"refusing to serve metrics on non-loopback address {host!r}: the "
                             "metrics describe the run to anyone who can reach them. Bind 127.0.0.1, "
                             "or set metrics.allow_public_bind: true")
        self._snapshot = snapshot
        self._host, self._want_port = host, port
        self._clock = clock
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(snapshot, clock=clock, restart_budget=restart_budget))
        self.tracker = AlertTracker(limits=Limits(restart_budget=restart_budget))
        self._pusher = AlertmanagerPusher(alertmanager_url) if alertmanager_url else None
        self._push_interval_s = push_interval_s
        self._httpd: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("MetricsServer.port is known only after start()")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def push_failures(self) -> int:
        """Failed Alertmanager pushes so far (0 without an alertmanager_url)."""
        return self._pusher.failures if self._pusher is not None else 0

    def start(self) -> MetricsServer:
        """Bind and serve in daemon threads; returns self so ``MetricsServer(...).start()`` chains."""
        if self._httpd is not None:
            return self
        self._httpd = _Server((self._host, self._want_port), self)
        self._stop.clear()
        httpd = self._httpd
        self._spawn(lambda: httpd.serve_forever(poll_interval=0.05), "metrics-http")  # quick stop()
        if self._pusher is not None:
            self._spawn(self._push_loop, "metrics-alertmanager")
        return self

    def stop(self) -> None:
        """Stop serving and join the threads; safe to call twice. With an Alertmanager, push once more
        first: the end state (RunFailed, a node excluded in the last interval) must reach people even
        when the run ends between two pushes."""
        if self._pusher is not None and self._httpd is not None:
            self.push_once()
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        self._httpd = None

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def render_metrics(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def render_alerts(self) -> tuple[bytes, str]:
        alerts = self.alerts()
        body = json.dumps({"status": "success", "data": {"alerts": alerts}}, allow_nan=False)
        return body.encode(), "application/json"

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts now, as Prometheus' /api/v1/alerts lists them."""
        return self.tracker.evaluate(self._snapshot(), self._clock())

    def push_once(self) -> bool:
        """Evaluate and push firing alerts to Alertmanager now; False if there is none or it failed."""
        if self._pusher is None:
            return False
        try:
            snap, now = self._snapshot(), self._clock()
            return self._pusher.push(self.tracker.firing(snap, now), now)
        except Exception:  # best effort: a bad snapshot must not end the push loop
            log.exception("alert evaluation for alertmanager failed")
            return False

    def _push_loop(self) -> None:
        while not self._stop.is_set():
            self.push_once()
            self._stop.wait(self._push_interval_s)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)
