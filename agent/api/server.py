"""One HTTP server for the native API, the cloud-compatible endpoints and /openapi.json.

Stdlib only (http.server). Limits, in the order a request meets them:
- at most `max_handlers` connections are served at once; one more is answered 503 and closed at once;
- with `tls_cert_file` / `tls_key_file`, HTTPS: the TLS handshake runs in the connection's own thread under
  `socket_timeout_s`, never on the accept thread, so a client that connects and says nothing holds one
  handler slot for that long, not the whole server;
- every socket read/write has `socket_timeout_s`, so a slow or silent client cannot hold a handler;
- the body size comes from Content-Length and is refused (413, the family's format) before it is read;
  chunked bodies are refused (411) because their size is unknown up front;
- engine work goes through `EngineGate` (bounded concurrency + bounded queue + wait timeout).
Every failure is turned into the calling family's documented error shape; nothing escapes as a 5xx
except genuine internal errors (500, logged with the request id).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agent.api.auth import Authenticator
from agent.api.common import (
    ApiError,
    EngineGate,
    PixelBudget,
    Request,
    Response,
    TokenCache,
    classify,
    json_response,
)
from agent.api.compat_faceplusplus import FacePlusPlusApi
from agent.api.compat_jd import JdApi
from agent.api.compat_jumdata import JumdataApi
from agent.api.config import ApiConfig, load_secrets
from agent.api.native import NativeApi
from agent.api.replay import shared_replays
from agent.api.routes import Family, Router
from agent.api.service import ApiContext, QualityGate
from agent.errors import ConfigError, TransientError
from agent.gallery import Gallery, Matcher, ScoreMap

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


class _HandshakeFailed(Exception):
    """The client did not complete a TLS handshake in time (or spoke something else): close, no answer."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        handler: type,
        max_handlers: int,
        router: Router,
        tls: ssl.SSLContext | None = None,
        handshake_timeout_s: float = 10.0,
    ) -> None:
        self._slots = threading.BoundedSemaphore(max_handlers)
        self._refusers = threading.BoundedSemaphore(_REFUSERS)
        self._router = router
        self._tls = tls
        self._handshake_timeout_s = handshake_timeout_s
        self.refused = 0
        self.handshake_failures = 0
        super().__init__(address, handler)

    def _secure(self, sock: socket.socket, timeout_s: float) -> socket.socket:
        """The connection with TLS set up (plain HTTP: as it is). Runs in the connection's thread."""
        if self._tls is None:
            return sock
        sock.settimeout(timeout_s)
        wrapped = self._tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        try:
            wrapped.do_handshake()
        except OSError as exc:  # ssl.SSLError and socket timeouts are OSErrors
            self.handshake_failures += 1
            log.debug("TLS handshake failed: %s", exc)
            wrapped.close()
            raise _HandshakeFailed from exc
        return wrapped

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            # The answer names the caller's family, so its request line is read, off the accept thread; a
            # flood beyond the refusers is closed unanswered (it would only queue up behind them).
            if self._refusers.acquire(blocking=False):
                threading.Thread(
                    target=self._refuse, args=(request, client_address), name="api-busy", daemon=True
                ).start()
            else:
                self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # socketserver's own version, with the slot freed before the socket closes: a client that sees the
        # close and connects again at once must find the slot free (it raced with the release before).
        conn = request
        try:
            conn = self._secure(request, self._handshake_timeout_s)
            self.finish_request(conn, client_address)
        except _HandshakeFailed:
            pass
        except Exception:
            self.handle_error(conn, client_address)
        finally:
            self._slots.release()
            self.shutdown_request(conn)

    def _refuse(self, sock: socket.socket, client_address: Any) -> None:
        conn = sock
        try:
            conn = self._secure(sock, _BUSY_TIMEOUT_S)
            _answer_busy(conn, str(client_address[0]), self._router)
        except _HandshakeFailed:
            pass
        finally:
            self._refusers.release()
            self.shutdown_request(conn)


_REFUSERS = 8  # connections answered "busy" at once, each for at most _BUSY_TIMEOUT_S
_BUSY_TIMEOUT_S = 1.0
_HEAD_LIMIT = 16 * 1024  # request line and headers read to find the family of a refused request
_DRAIN_LIMIT = 64 * 1024 * 1024  # unread body read and dropped after an early answer, so the client gets it
_DRAIN_S = 5.0


def _answer_busy(sock: socket.socket, client_ip: str, router: Router) -> None:
    """Answer a connection beyond max_handlers with its family's rate-limit error (Face++ 403
    CONCURRENCY_LIMIT_EXCEEDED, jumdata 609, JD 10020, native 429), read from its request line."""
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    head = b""
    try:
        sock.settimeout(_BUSY_TIMEOUT_S)
        while b"\r\n\r\n" not in head and len(head) < _HEAD_LIMIT and time.monotonic() < deadline:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    except OSError:
        pass
    lines = head.split(b"\r\n")
    parts = lines[0].decode("latin-1").split(" ") if lines and lines[0] else []
    method, target = (parts[0], parts[1]) if len(parts) >= 2 else ("GET", "/")
    path = urlsplit(target).path
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.decode("latin-1").partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    req = Request(method, path, {}, headers, b"", client_ip)
    resp = _failure(router.family_for(path), TransientError("too many connections", code="busy"), req)
    out = [f"HTTP/1.1 {resp.status} {HTTPStatus(resp.status).phrase}", f"Content-Type: {resp.content_type}"]
    out += [f"Content-Length: {len(resp.body)}", "Retry-After: 1", "Connection: close"]
    out += [f"{k}: {v}" for k, v in resp.headers.items()]
    try:
        sock.sendall(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + resp.body)
        sock.shutdown(socket.SHUT_WR)
        _drain(sock.recv, _DRAIN_LIMIT, _BUSY_TIMEOUT_S)
    except OSError:
        pass


def _drain(read: Callable[[int], bytes], limit: int, seconds: float) -> None:
    """Read and drop what the client still sends (its body) after an early answer, so closing does not reset
    the connection before the client has read it. Bounded in bytes and time; a failed read ends it."""
    left, deadline = limit, time.monotonic() + seconds
    try:
        while left > 0 and time.monotonic() < deadline:
            chunk = read(min(65536, left))
            if not chunk:
                return
            left -= len(chunk)
    except OSError:
        pass


def _make_handler(router: Router, config: ApiConfig) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = config.socket_timeout_s
        # Headers and body leave in two writes; with Nagle on, the body waits for the client's delayed ACK
        # (~40 ms per request on keep-alive connections, measured with scripts/bench_api.py).
        disable_nagle_algorithm = True
        server_version = "face-agent"
        sys_version = ""

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("%s " + fmt, self.client_address[0], *args)

        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def do_PUT(self) -> None:
            self._handle()

        def do_DELETE(self) -> None:
            self._handle()

        # Other methods get the family's "not allowed" answer instead of http.server's bare 501.
        def do_PATCH(self) -> None:
            self._handle()

        def do_OPTIONS(self) -> None:
            self._handle()

        def do_HEAD(self) -> None:
            self._handle()

        def _handle(self) -> None:
            split = urlsplit(self.path)
            family = router.family_for(split.path)
            req = Request(
                self.command,
                split.path,
                {},
                {k.lower(): v for k, v in self.headers.items()},
                b"",
                str(self.client_address[0]),
            )
            req.headers[":target"] = self.path
            self._unread = 0
            try:
                req.body = self._read_body(getattr(family, "max_body_bytes", None))
            except OSError:  # client stalled past socket_timeout_s or went away mid-body: nobody to answer
                self.close_connection = True
                return
            except ApiError as exc:
                self._send(_failure(family, exc, req), req)
                self._drain()
                return
            try:
                req.query = _parse_query(split.query)
                resp = router.dispatch(req)
            except Exception as exc:  # every failure gets the family's documented shape
                resp = _failure(family, exc, req)
            self._send(resp, req)

        def _drain(self) -> None:
            """A body refused unread (too large) is still on its way: read and drop it (bounded), so a client
            that sends its whole body before reading (requests, http.client) gets the answer, not a reset."""
            if self._unread:
                _drain(self.rfile.read1, min(self._unread, _DRAIN_LIMIT), _DRAIN_S)

        def _read_body(self, family_limit: int | None = None) -> bytes:
            if "transfer-encoding" in {k.lower() for k in self.headers}:
                self.close_connection = True
                raise ApiError("length_required", "chunked bodies are not accepted; send Content-Length")
            raw = self.headers.get("Content-Length")
            if raw is None:
                if self.command in ("POST", "PUT"):
                    self.close_connection = True
                    raise ApiError("length_required", "Content-Length is required")
                return b""
            try:
                length = int(raw)
            except ValueError:
                length = -1
            if length < 0:
                self.close_connection = True
                raise ApiError("bad_body", "Content-Length is not a non-negative integer")
            limit = min(config.max_body_bytes, family_limit or config.max_body_bytes)
            if length > limit:
                self.close_connection = True  # the unread body must not be taken for the next request
                self._unread = length
                raise ApiError("body_too_large", f"body of {length} bytes exceeds {limit}")
            body = self.rfile.read(length)
            if len(body) != length:
                self.close_connection = True
                raise ApiError("bad_body", "body shorter than Content-Length")
            return body

        def _send(self, resp: Response, req: Request) -> None:
            try:
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.content_type)
                self.send_header("Content-Length", str(len(resp.body)))
                self.send_header("X-Request-Id", req.request_id)
                for k, v in resp.headers.items():
                    self.send_header(k, v)
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(resp.body)
            except OSError:
                self.close_connection = True

    return Handler


def _parse_query(query: str) -> dict[str, list[str]]:
    try:
        return parse_qs(query, keep_blank_values=True, max_num_fields=100, errors="strict")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError("bad_argument", f"query string is invalid: {exc}") from exc


def _failure(family: Family, exc: Exception, req: Request) -> Response:
    if classify(exc)[0] == "internal":  # a bug or a broken model/device: loud, with the request id
        log.error("internal error in %s %s (request %s)", req.method, req.path, req.request_id, exc_info=exc)
    try:
        return family.error(exc, req)
    except Exception:  # a bug in an error mapper must still not kill the connection silently
        log.exception("error mapping failed for request %s", req.request_id)
        return json_response(500, {"error": {"code": "internal", "message": "internal error"}})


class ApiServer:
    """The HTTP API on one port. `start()` binds and serves in a thread; `stop()` shuts it down."""

    def __init__(self, config: ApiConfig, ctx: ApiContext, families: Sequence[Family] = ()) -> None:
        """`families`: more API families served beside the built-in ones (the hub's /v1/sync); their owner
        closes what they hold after `stop()`."""
        self.config = config
        self.ctx = ctx
        self.router = build_router(ctx, families)
        tls = tls_context(config)
        self._httpd = _Server(
            (config.host, config.port),
            _make_handler(self.router, config),
            config.max_handlers,
            self.router,
            tls,
            config.socket_timeout_s,
        )
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"{'https' if self.config.tls else 'http'}://{host}:{self.port}"

    @property
    def refused_connections(self) -> int:
        return self._httpd.refused

    def start(self) -> ApiServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="api-server", daemon=True
        )
        self._thread.start()
        log.info("API listening on %s", self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
        self.ctx.auth.close()  # a handler still running gets the family's 'unavailable' answer

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
