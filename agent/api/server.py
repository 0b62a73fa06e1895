"""One ASGI application for the native API, the cloud-compatible families, /openapi.json and the mounts given
by higher layers (the console, /metrics, /healthz, /readyz), served by uvicorn (agent/ops/http.py).

Starlette composes the application: its Mount sends a path prefix to its own application (the console is a
Starlette app with its own sessions and pages); everything else goes to the families (agent/api/asgi.py),
whose answers and errors keep each vendor's documented shapes, which Starlette's own 404/405 would not.
Limits: at most `max_handlers` connections at once (one more gets its family's rate-limit answer), heads and
TLS handshakes within `socket_timeout_s`, bodies refused by size before they are read, stalled bodies dropped
(agent/api/asgi.py and agent/ops/http.py say how).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from typing import Any

from agent.api.asgi import FamiliesApp, busy_app
from agent.api.auth import Authenticator
from agent.api.common import EngineGate, PixelBudget, TokenCache
from agent.api.compat_faceplusplus import FacePlusPlusApi
from agent.api.compat_jd import JdApi
from agent.api.compat_jumdata import JumdataApi
from agent.api.config import ApiConfig, load_secrets
from agent.api.native import NativeApi
from agent.api.replay import shared_replays
from agent.api.routes import Family, Router
from agent.api.service import ApiContext, QualityGate
from agent.errors import ConfigError
from agent.gallery import Gallery, Matcher, ScoreMap
from agent.ops.http import HttpServer, Limits

log = logging.getLogger(__name__)


def build_context(
    config: ApiConfig,
    engine: Any,
    gallery: Gallery,
    scores: ScoreMap | None = None,
    secrets: dict[str, str] | None = None,
    quality: QualityGate | None = None,
) -> ApiContext:
    """Wire the shared parts. Thresholds: explicit `scores`, else the config override, else the engine's
    model manifest; a model without calibrated thresholds fails here, at start-up."""
    if scores is None:
        thresholds = config.score_thresholds or getattr(engine, "thresholds", {})
        try:
            scores = ScoreMap(thresholds)
        except ConfigError as exc:
            raise ConfigError(f"API needs FAR thresholds for {engine.model_id}: {exc}") from exc
    secrets = load_secrets(config) if secrets is None else secrets
    return ApiContext(
        config=config,
        engine=engine,
        gallery=gallery,
        matcher=Matcher(gallery, engine.model_id, scores, gallery.config),
        scores=scores,
        gate=EngineGate(config.engine_concurrency, config.engine_queue, config.engine_wait_s),
        auth=Authenticator(config, secrets, shared_replays(config, gallery, "api")),
        tokens=TokenCache(config.face_token_cache, config.face_token_ttl_s),
        quality=quality or QualityGate(),
        decodes=PixelBudget(config.decode_pixels, config.engine_wait_s),
    )


def build_router(ctx: ApiContext, extra: Sequence[Family] = ()) -> Router:
    """The API families, after `extra` ones given by higher layers (the hub's /v1/sync family): agent.api
    never imports them, they come in through this argument."""
    native = NativeApi(ctx)
    return Router([*extra, JdApi(ctx), FacePlusPlusApi(ctx), JumdataApi(ctx), native], native)


def tls_context(config: ApiConfig) -> ssl.SSLContext | None:
    """The server's TLS context from api.tls_cert_file / tls_key_file (None: plain HTTP); a certificate or
    key that cannot be loaded is a ConfigError at start-up."""
    if config.tls_cert_file is None or config.tls_key_file is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(config.tls_cert_file), str(config.tls_key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"api.tls_cert_file {config.tls_cert_file} / api.tls_key_file {config.tls_key_file}: {exc}"
        ) from exc
    return ctx


class ApiServer:
    """The HTTP API on one port. `start()` binds (OSError when it cannot) and serves in a thread; `stop()`
    shuts it down."""

    def __init__(
        self,
        config: ApiConfig,
        ctx: ApiContext,
        families: Sequence[Family] = (),
        mounts: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """`families`: more API families served beside the built-in ones (the hub's /v1/sync); their owner
        closes what they hold after `stop()`. `mounts`: (path prefix, ASGI app or Starlette routes) pairs
        served before the families (the console at /console; /metrics etc. as a list of routes at "")."""
        from starlette.applications import Starlette
        from starlette.routing import Mount

        self.config = config
        self.ctx = ctx
        self.router = build_router(ctx, families)
        routes: list[Any] = []
        for prefix, target in mounts:
            if isinstance(target, list):
                routes.extend(target)
            else:
                routes.append(Mount(prefix, app=target))
        routes.append(Mount("", app=FamiliesApp(self.router, config)))
        self.app = Starlette(routes=routes)
        limits = Limits(config.max_handlers, config.socket_timeout_s)
        self._http = HttpServer(
            self.app,
            config.host,
            config.port,
            limits,
            busy_app=busy_app(self.router),
            tls=tls_context(config),
            name="api",
        )

    @property
    def port(self) -> int:
        return self._http.port

    @property
    def url(self) -> str:
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"{'https' if self.config.tls else 'http'}://{host}:{self.port}"

    @property
    def refused_connections(self) -> int:
        return self._http.gate.refused

    @property
    def handshake_failures(self) -> int:
        return self._http.gate.handshake_failures

    def start(self) -> ApiServer:
        self._http.start()
        log.info("API listening on %s", self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._http.stop(timeout)
        self.ctx.auth.close()  # a handler still running gets the family's 'unavailable' answer

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
