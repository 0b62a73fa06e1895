"""/metrics, /healthz (liveness) and /readyz (readiness): Starlette routes, served on their own port (loopback
by default) by uvicorn through agent/ops/http.py, and mounted on the API's application by `run`.

/healthz answers 200 while every registered heartbeat is fresh, 503 naming the stale ones otherwise.
/readyz answers 200 once every readiness check (models warmed, gallery loaded) is set, 503 before that.
Connections are bounded: past `max_connections` a new one is closed at once and counted.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from typing import Any

from agent.errors import FatalError
from agent.ops.http import HttpServer, Limits
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
        self._server: HttpServer | None = None

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

    def routes(self, *, metrics_from_loopback_only: bool = False) -> list[Any]:
        """The three endpoints as Starlette routes. On a public port (the API's) /metrics can be limited to
        loopback clients: its numbers are not public."""
        from starlette.responses import Response
        from starlette.routing import Route

        def answer(status: int, ctype: str, body: bytes) -> Response:
            return Response(body, status, media_type=ctype, headers={"Cache-Control": "no-store"})

        def metrics(request: Any) -> Response:
            client = request.client.host if request.client else ""
            if metrics_from_loopback_only and client not in ("127.0.0.1", "::1"):
                return answer(403, "application/json", b'{"error": "metrics are served to loopback only"}')
            return answer(200, CONTENT_TYPE, self.registry.render().encode())

        # Plain functions: Starlette runs them in a worker thread, where rendering cannot stall the loop.
        return [
            Route("/metrics", metrics, methods=["GET", "HEAD"]),
            Route("/healthz", lambda request: answer(*self.liveness()), methods=["GET", "HEAD"]),
            Route("/readyz", lambda request: answer(*self.readiness_report()), methods=["GET", "HEAD"]),
        ]

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("health server not started")
        return self.config.host, self._server.port

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("health server already started")
        from starlette.applications import Starlette

        async def not_found(request: Any, exc: Exception) -> Any:
            from starlette.responses import Response

            return Response(b'{"error": "not found"}', 404, media_type="application/json")

        app = Starlette(routes=self.routes(), exception_handlers={404: not_found})
        limits = Limits(self.config.max_connections, self.config.request_timeout_s, max_busy=0)
        server = HttpServer(
            app, self.config.host, self.config.port, limits, name="health", backlog=16,
            on_refused=self.rejected.inc,
        )
        try:
            server.start()
        except OSError as exc:
            raise FatalError(
                f"cannot serve metrics on {self.config.host}:{self.config.port}: {exc}; set metrics.port to "
                "a free port (another face-agent on this host needs its own) or metrics.enabled: false",
                code="metrics_bind_failed",
            ) from exc
        self._server = server
        self._log.info("serving /metrics, /healthz, /readyz on %s", self.url)

    def stop(self) -> bool:
        """Stop serving and close the socket; True when the server thread ended within the timeout."""
        server, self._server = self._server, None
        if server is None:
            return True
        stopped = server.stop(self.config.stop_timeout_s)
        if not stopped:
            self._log.warning("health server thread did not stop within %.1f s", self.config.stop_timeout_s)
        return stopped
