"""Stdlib HTTP endpoint for /metrics, /healthz (liveness) and /readyz (readiness).

/healthz answers 200 while every registered heartbeat is fresh, 503 naming the stale ones otherwise.
/readyz answers 200 once every readiness check (models warmed, gallery loaded) is set, 503 before that.
Connections are bounded: past `max_connections` a new one is closed at once and counted.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer

from agent.errors import FatalError
from agent.ops.metrics import CONTENT_TYPE, Registry
from agent.ops.metrics_config import MetricsConfig
from agent.ops.systemd import HeartbeatRegistry

READINESS_CHECKS = ("models_warmed", "gallery_loaded")


class Readiness:
    """Named readiness checks; ready when all are true. A reload may set one back to false."""

    def __init__(self, checks: Iterable[str] = READINESS_CHECKS) -> None:
        self._lock = threading.Lock()
        self._checks: dict[str, tuple[bool, str]] = {name: (False, "not yet") for name in checks}
        if not self._checks:
            raise ValueError("readiness needs at least one check")

    def set(self, name: str, ok: bool, detail: str = "") -> None:
        with self._lock:
            if name not in self._checks:
                raise ValueError(f"unknown readiness check {name!r}; known: {sorted(self._checks)}")
            self._checks[name] = (ok, detail)

    def snapshot(self) -> dict[str, dict[str, object]]:
        with self._lock:
            return {name: {"ok": ok, "detail": detail} for name, (ok, detail) in self._checks.items()}

    @property
    def ready(self) -> bool:
        with self._lock:
            return all(ok for ok, _ in self._checks.values())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for a slow client; request sockets have timeouts
    request_queue_size = 16

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], app: HealthServer):
        self.app = app
        self.slots = threading.BoundedSemaphore(app.config.max_connections)
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can hang offline.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        if not self.slots.acquire(blocking=False):
            self.app.rejected.inc()
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "face-agent"

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._respond(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._respond(head=True)

    def _respond(self, *, head: bool) -> None:
        app = self.server.app
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            status, ctype, body = 200, CONTENT_TYPE, app.registry.render().encode()
        elif path == "/healthz":
            status, ctype, body = app.liveness()
        elif path == "/readyz":
            status, ctype, body = app.readiness_report()
        else:
            status, ctype, body = 404, "application/json", b'{"error": "not found"}'
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib signature)
        # One line per scrape would flood the journal; keep it at debug.
        logging.getLogger("agent.health").debug("%s %s", self.address_string(), format % args)


class HealthServer:
    """Owns the HTTP server thread. start() raises FatalError when the address cannot be bound."""

    def __init__(
        self,
        config: MetricsConfig,
        *,
        registry: Registry,
        heartbeats: HeartbeatRegistry,
        readiness: Readiness,
        logger: logging.Logger | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.heartbeats = heartbeats
        self.readiness = readiness
        self._log = logger or logging.getLogger("agent.health")
        self.rejected = registry.counter(
            "face_agent_http_health_rejected_total", "Health/metrics connections closed: too many at once"
        )
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def liveness(self) -> tuple[int, str, bytes]:
        stale = self.heartbeats.stale()
        doc = {
            "status": "stale" if stale else "ok",
            "stale": [{"name": s.name, "age_s": round(s.age_s, 3), "max_age_s": s.max_age_s} for s in stale],
            "heartbeats": {name: round(age, 3) for name, age in self.heartbeats.ages().items()},
        }
        return (503 if stale else 200), "application/json", json.dumps(doc).encode()

    def readiness_report(self) -> tuple[int, str, bytes]:
        checks = self.readiness.snapshot()
        ready = all(c["ok"] for c in checks.values())
        body = json.dumps({"ready": ready, "checks": checks}).encode()
        return (200 if ready else 503), "application/json", body

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("health server not started")
        return self._server.server_name, self._server.server_port

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("health server already started")
        cls = _Server6 if ":" in self.config.host else _Server
        handler = type("HealthHandler", (_Handler,), {"timeout": self.config.request_timeout_s})
        try:
            self._server = cls((self.config.host, self.config.port), handler, self)
        except OSError as exc:
            raise FatalError(
                f"cannot serve metrics on {self.config.host}:{self.config.port}: {exc}; set metrics.port to "
                "a free port (another face-agent on this host needs its own) or metrics.enabled: false",
                code="metrics_bind_failed",
            ) from exc
        started = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(started,), name="health-http", daemon=True)
        self._thread.start()
        if not started.wait(self.config.start_timeout_s):
            raise FatalError("health server thread did not start in time", code="metrics_start_timeout")
        self._log.info("serving /metrics, /healthz, /readyz on %s", self.url)

    def _serve(self, started: threading.Event) -> None:
        assert self._server is not None
        started.set()
        self._server.serve_forever(poll_interval=0.2)

    def stop(self) -> bool:
        """Stop serving and close the socket; True when the server thread ended within the timeout."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return True
        # shutdown() blocks until serve_forever notices, which happens within one poll_interval.
        stopper = threading.Thread(target=server.shutdown, name="health-http-stop", daemon=True)
        stopper.start()
        stopper.join(self.config.stop_timeout_s)
        thread.join(max(0.0, self.config.stop_timeout_s))
        server.server_close()
        self._server = self._thread = None
        stopped = not thread.is_alive()
        if not stopped:
            self._log.warning("health server thread did not stop within %.1f s", self.config.stop_timeout_s)
        return stopped
