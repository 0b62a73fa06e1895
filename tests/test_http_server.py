"""The limits agent/ops/http.py adds to uvicorn, over real sockets: request-head deadlines (slow and idle
clients), non-ASCII request targets, an over-limit body announced with Expect: 100-continue, keep-alive, and
the health routes mounted on the API's application."""

from __future__ import annotations

import json
import socket
import time

import pytest
from test_api_support import Running, api_config, call, shared_engine, start

from agent.api import ApiServer, build_context
from agent.gallery import Gallery, GalleryConfig
from agent.ops.health import HealthServer, Readiness
from agent.ops.metrics import Registry
from agent.ops.metrics_config import MetricsConfig
from agent.ops.systemd import HeartbeatRegistry


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    r = start(tmp_path_factory.mktemp("http"), max_handlers=2, socket_timeout_s=1.0)
    yield r
    r.close()


def _until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when the close came."""
    sock.settimeout(limit_s)
    t0, data = time.monotonic(), b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data, time.monotonic() - t0
        data += chunk


def test_a_client_dribbling_its_request_head_is_closed_at_the_deadline(run):
    """One byte every 0.2 s never lets a per-read timeout fire; the head's deadline (1 s) does."""
    with socket.create_connection(("127.0.0.1", run.server.port), timeout=10) as s:
        t0 = time.monotonic()
        closed = False
        for byte in b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            try:
                s.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.2)  # the client's pace, not a synchronisation
            if time.monotonic() - t0 > 6:
                break
        if not closed:
            data, _ = _until_closed(s, 5)
            assert data == b""
        assert time.monotonic() - t0 < 6
    assert call(run, "GET", "/api/v1/health").status == 200  # its slot is free


def test_an_idle_keep_alive_connection_is_closed_after_the_socket_timeout(run):
    with socket.create_connection(("127.0.0.1", run.server.port), timeout=10) as s:
        s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        data, after = _until_closed(s, 10)
    assert data.startswith(b"HTTP/1.1 200") and b"face-agent" in data
    assert after < 5


def test_a_non_ascii_request_target_gets_400_not_a_dropped_connection(run):
    with socket.create_connection(("127.0.0.1", run.server.port), timeout=10) as s:
        s.sendall("GET /api/v1/gr\u00fcppe HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data, _ = _until_closed(s, 10)
    assert data.startswith(b"HTTP/1.1 400"), data[:80]


def test_an_oversize_body_announced_with_100_continue_is_refused_before_it_is_sent(run):
    """curl's way: the 413 arrives while the client still holds its body back."""
    with socket.create_connection(("127.0.0.1", run.server.port), timeout=10) as s:
        s.sendall(
            b"POST /api/v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 90000000\r\nExpect: 100-continue\r\n\r\n"
        )
        data, after = _until_closed(s, 10)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and b"100 Continue" not in head, head
    assert json.loads(body)["error"]["code"] == "body_too_large"
    assert after < 3


def test_keep_alive_serves_many_requests_on_one_connection(run):
    with socket.create_connection(("127.0.0.1", run.server.port), timeout=10) as s:
        s.settimeout(10)
        for _ in range(5):
            s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(4096)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(
                next(
                    v
                    for k, v in (h.split(b": ", 1) for h in head.split(b"\r\n")[1:])
                    if k.lower() == b"content-length"
                )
            )
            while len(body) < length:
                body += s.recv(4096)
            assert head.startswith(b"HTTP/1.1 200") and json.loads(body)


def test_health_routes_on_the_api_port(tmp_path):
    registry, readiness = Registry(), Readiness(("models_warmed",))
    health = HealthServer(
        MetricsConfig(port=0), registry=registry, heartbeats=HeartbeatRegistry(), readiness=readiness
    )
    gallery = Gallery(GalleryConfig(path=tmp_path / "g", save_interval_s=0))
    cfg = api_config(tmp_path / "cfg")
    mounts = [("", health.routes(metrics_from_loopback_only=True))]
    server = ApiServer(cfg, build_context(cfg, shared_engine(), gallery), mounts=mounts).start()
    r = Running(server, gallery)
    try:
        assert call(r, "GET", "/readyz").status == 503  # models not warmed yet
        readiness.set("models_warmed", True, "m")
        ready = call(r, "GET", "/readyz")
        assert ready.status == 200 and ready.json()["ready"] is True
        assert ready.headers["cache-control"] == "no-store"
        assert call(r, "GET", "/healthz").status == 200
        metrics = call(r, "GET", "/metrics")
        assert metrics.status == 200 and b"face_agent_http_health_rejected_total" in metrics.body
        # the families still answer beside them, in their own shapes
        assert call(r, "GET", "/api/v1/nothing-here").json()["error"]["code"] == "not_found"
    finally:
        r.close()


def test_serve_answers_health_routes_beside_the_api(tmp_path):
    """`face-agent serve` (no cameras): /healthz, /readyz and /metrics on the API's port."""
    import threading
    import urllib.request

    import yaml

    from agent.cli.serve import load_serve_config, run_serve

    cfg_path = tmp_path / "serve.yaml"
    api = {"host": "127.0.0.1", "port": 0, "allow_unauthenticated_loopback": True}
    cfg_path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "api": api}))
    stop, ready, urls, result = threading.Event(), threading.Event(), [], []

    def serve() -> None:
        try:
            result.append(
                run_serve(load_serve_config(cfg_path, {}), {}, stop, lambda u: (urls.append(u), ready.set()))
            )
        except BaseException as exc:  # noqa: BLE001 - reported by the assertions below
            result.append(exc)
            ready.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert ready.wait(120) and urls, result
        for path, want in (("/healthz", b'"status"'), ("/readyz", b'"ready": true'), ("/metrics", b"# HELP")):
            with urllib.request.urlopen(urls[0] + path, timeout=10) as resp:
                body = resp.read()
                assert resp.status == 200 and want in body, (path, body[:200])
                assert resp.headers["Cache-Control"] == "no-store"
    finally:
        stop.set()
        thread.join(60)
    assert result == [0]


def test_a_body_trickled_slower_than_the_minimum_rate_is_cut(run):
    """A byte every 0.4 s never lets a 1 s read timeout fire; the body's own deadline (1 s + length at
    32 KiB/s) does, without an answer."""
    with socket.create_connection(("127.0.0.1", run.server.port), timeout=10) as s:
        s.sendall(b"POST /api/v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        s.sendall(b"Content-Length: 100\r\n\r\n")
        t0, cut = time.monotonic(), False
        for _ in range(20):
            try:
                s.sendall(b" ")
            except OSError:
                cut = True
                break
            time.sleep(0.4)  # the client's pace, not a synchronisation
        if not cut:
            try:
                data, _ = _until_closed(s, 5)
            except ConnectionResetError:
                data = b""
            assert data == b""
        assert time.monotonic() - t0 < 6
    assert call(run, "GET", "/api/v1/health").status == 200


def test_a_client_that_does_not_read_its_answers_is_cut_and_frees_its_slot(tmp_path):
    r = start(tmp_path, max_handlers=1, socket_timeout_s=1.0)
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small: the server's writes block soon
        s.connect(("127.0.0.1", r.server.port))
        s.settimeout(10)
        s.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * 400)  # pipelined, never read
        t0, busy = time.monotonic(), 0
        while True:  # held while the server writes; free again once it cut the connection
            reply = call(r, "GET", "/api/v1/health")
            if reply.status == 200:
                break
            busy += 1
            assert reply.status == 429 and time.monotonic() - t0 < 8, reply.status
        try:
            while s.recv(65536):  # what reached the socket before the cut, then the end
                pass
        except ConnectionResetError:
            pass
        s.close()
        assert busy >= 1 and r.server.refused_connections == busy
    finally:
        r.close()
