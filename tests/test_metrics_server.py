"""The HTTP endpoint: routes, limits, concurrency, bind policy and the Alertmanager push."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from orchestrator.metrics.server import MetricsServer, is_loopback
from orchestrator.snapshot import RunSnapshot


@pytest.fixture
def snap() -> RunSnapshot:
    return RunSnapshot(name="srv", state="RUNNING", step=7, loss=1.5, excluded_nodes=["n2"])


@pytest.fixture
def server(snap: RunSnapshot) -> Iterator[MetricsServer]:
    with MetricsServer(lambda: snap) as srv:
        yield srv
    assert not [t for t in threading.enumerate() if t.name.startswith("metrics-")]


def get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


def raw(port: int, request: bytes) -> bytes:
    """Send raw bytes, return the whole response (the server closes after one response)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_metrics_endpoint(server: MetricsServer) -> None:
    status, body, ctype = get(server.url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    assert b'orchestrator_step{run="srv"} 7.0' in body


def test_alerts_endpoint(server: MetricsServer) -> None:
    status, body, ctype = get(server.url + "/alerts")
    doc = json.loads(body)
    assert status == 200 and ctype == "application/json" and doc["status"] == "success"
    assert [a["labels"]["alertname"] for a in doc["data"]["alerts"]] == ["NodeExcluded"]


def test_healthz_and_query_string(server: MetricsServer) -> None:
    assert get(server.url + "/healthz")[:2] == (200, b"ok\n")
    assert get(server.url + "/metrics?x=1")[0] == 200


@pytest.mark.parametrize("path", ["/", "/metrics/", "/index.html", "/../../etc/passwd", "/orchestrator"])
def test_other_paths_404(server: MetricsServer, path: str) -> None:
    resp = raw(server.port, f"GET {path} HTTP/1.0\r\n\r\n".encode())
    assert resp.startswith(b"HTTP/1.0 404")


def test_head_and_wrong_method(server: MetricsServer) -> None:
    head = raw(server.port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and head.endswith(b"\r\n\r\n")
    assert raw(server.port, b"POST /metrics HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 405")


def test_long_request_line_rejected(server: MetricsServer) -> None:
    resp = raw(server.port, b"GET /" + b"a" * 10_000 + b" HTTP/1.0\r\n\r\n")
    assert resp.startswith(b"HTTP/1.0 414")
    assert get(server.url + "/healthz")[0] == 200


def test_large_headers_rejected(server: MetricsServer) -> None:
    big = b"X-Big: " + b"b" * 9000 + b"\r\n"
    assert raw(server.port, b"GET /metrics HTTP/1.0\r\n" + big + b"\r\n").startswith(b"HTTP/1.0 431")
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(100))
    assert raw(server.port, b"GET /metrics HTTP/1.0\r\n" + many + b"\r\n").startswith(b"HTTP/1.0 431")


def test_fifty_concurrent_requests(server: MetricsServer) -> None:
    paths = ["/metrics", "/alerts", "/healthz", "/nope"] * 13
    with ThreadPoolExecutor(max_workers=50) as pool:
        codes = list(pool.map(lambda p: get(server.url + p)[0], paths[:50]))
    assert codes == [404 if p == "/nope" else 200 for p in paths[:50]]


def test_failing_snapshot_gives_500_and_server_survives() -> None:
    def broken() -> RunSnapshot:
        raise RuntimeError("supervisor state unavailable")

    with MetricsServer(broken) as srv:
        assert get(srv.url + "/metrics")[0] == 500
        assert get(srv.url + "/alerts")[0] == 500
        assert get(srv.url + "/healthz")[0] == 200


def test_loopback_default_and_public_refused() -> None:
    srv = MetricsServer(RunSnapshot)
    with srv:
        assert srv.url.startswith("http://127.0.0.1:") and srv.port > 0
    with pytest.raises(ValueError, match="allow_public_bind"):
        MetricsServer(RunSnapshot, host="0.0.0.0")
    assert is_loopback("localhost") and is_loopback("::1") and not is_loopback("0.0.0.0")


def test_public_bind_when_allowed() -> None:
    with MetricsServer(RunSnapshot, host="0.0.0.0", allow_public=True) as srv:
        assert get(f"http://127.0.0.1:{srv.port}/healthz")[0] == 200


def test_port_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="start"):
        _ = MetricsServer(RunSnapshot).port


class _FakeAlertmanager(BaseHTTPRequestHandler):
    received: list[tuple[str, list[dict]]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_alertmanager_push_and_resolve(snap: RunSnapshot) -> None:
    _FakeAlertmanager.received = []
    am = HTTPServer(("127.0.0.1", 0), _FakeAlertmanager)
    t = threading.Thread(target=am.serve_forever, daemon=True)
    t.start()
    try:
        now = [1_700_000_000.0]
        srv = MetricsServer(lambda: snap, alertmanager_url=f"http://127.0.0.1:{am.server_port}",
                            clock=lambda: now[0], push_interval_s=3600)
        assert srv.push_once()
        path, alerts = _FakeAlertmanager.received[-1]
        assert path == "/api/v2/alerts" and alerts[0]["labels"]["alertname"] == "NodeExcluded"
        assert "endsAt" not in alerts[0]
        snap.excluded_nodes = []
        now[0] += 30
        assert srv.push_once()
        assert _FakeAlertmanager.received[-1][1][0]["endsAt"] == "2023-11-14T22:13:50Z"
    finally:
        am.shutdown()
        am.server_close()
        t.join()


def test_alertmanager_down_never_raises(snap: RunSnapshot) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    with MetricsServer(lambda: snap, alertmanager_url=f"http://127.0.0.1:{dead_port}",
                       push_interval_s=0.05) as srv:
        assert srv.push_once() is False
        deadline = time.monotonic() + 10
        while srv.push_failures < 3 and time.monotonic() < deadline:  # the loop keeps going
            time.sleep(0.01)
        assert srv.push_failures >= 3
        assert get(srv.url + "/healthz")[0] == 200
