"""The API families as one ASGI application, and the answer given to a connection beyond max_handlers.

Limits, in the order a request meets them (connections, heads and TLS handshakes: agent/ops/http.py):
- the body size comes from Content-Length and is refused (413, the family's format) before any of it is
  read; chunked bodies are refused (411) because their size is unknown up front;
- every read of the body waits at most `socket_timeout_s` (and the whole body has a deadline, see
  agent/ops/http.py); a client that stalls mid-body is dropped without an answer, its slot free at once;
- after an early answer the rest of the body is read and dropped (bounded in bytes and time), so a client
  that sends its whole body before reading (requests, http.client) gets the answer, not a reset;
- handlers are blocking (engine, SQLite): they run in worker threads, at most `max_handlers` at once, and
  engine work goes through `EngineGate` (bounded concurrency + bounded queue + wait timeout).
Every failure is turned into the calling family's documented error shape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agent.api.common import ApiError, Request, Response, classify, json_response
from agent.api.config import ApiConfig
from agent.api.routes import Family, Router
from agent.errors import TransientError
from agent.ops.http import CONNECTION, answer_then_drain

log = logging.getLogger(__name__)

DRAIN_LIMIT = 64 * 1024 * 1024  # unread body read and dropped after an early answer
DRAIN_S = 5.0
BUSY_DRAIN_S = 1.0


class _Stalled(Exception):
    """The client stopped sending its body (or went away): drop the connection, no answer."""


class FamiliesApp:
    """Routes a request to its family's handler in a worker thread and sends the family's answer."""

    def __init__(self, router: Router, config: ApiConfig) -> None:
        self.router = router
        self.config = config
        self._limiter: Any = None  # anyio.CapacityLimiter, made on the server's loop at the first request

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        req = request_of(scope)
        family = self.router.family_for(req.path)
        try:
            req.body = await self._read_body(req, receive, getattr(family, "max_body_bytes", None))
        except _Stalled:
            scope["extensions"][CONNECTION].abort()
            return
        except ApiError as exc:
            await send_response(send, failure(family, exc, req), req, close=True, drain=receive)
            return
        resp = await self._dispatch(req, family)
        await send_response(send, resp, req, close=req.headers.get("connection", "").lower() == "close")

    async def _dispatch(self, req: Request, family: Family) -> Response:
        import anyio.to_thread

        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.config.max_handlers)
        return await anyio.to_thread.run_sync(self._handle, req, family, limiter=self._limiter)

    def _handle(self, req: Request, family: Family) -> Response:
        try:
            req.query = parse_query(urlsplit(req.headers[":target"]).query)
            return self.router.dispatch(req)
        except Exception as exc:  # every failure gets the family's documented shape
            return failure(family, exc, req)

    async def _read_body(self, req: Request, receive: Callable, family_limit: int | None) -> bytes:
        if "transfer-encoding" in req.headers:
            raise ApiError("length_required", "chunked bodies are not accepted; send Content-Length")
        raw = req.headers.get("content-length")
        if raw is None:
            if req.method in ("POST", "PUT"):
                raise ApiError("length_required", "Content-Length is required")
            return b""
        try:
            length = int(raw)
        except ValueError:
            length = -1
        if length < 0:
            raise ApiError("bad_body", "Content-Length is not a non-negative integer")
        limit = min(self.config.max_body_bytes, family_limit or self.config.max_body_bytes)
        if length > limit:
            raise ApiError("body_too_large", f"body of {length} bytes exceeds {limit}")
        chunks, got = [], 0
        while True:
            message = await receive()  # bounded by the server (agent/ops/http.py): a stall is a disconnect
            if message["type"] != "http.request":
                raise _Stalled
            chunks.append(message.get("body", b""))
            got += len(chunks[-1])
            if not message.get("more_body", False):
                break
        if got != length:
            raise ApiError("bad_body", "body shorter than Content-Length")
        return b"".join(chunks)


def request_of(scope: dict[str, Any]) -> Request:
    """The family-level request of an ASGI scope: the raw path (families decode their own parameters)."""
    raw = scope.get("raw_path") or scope["path"].encode("utf-8")
    path = raw.decode("latin-1")
    if not path.startswith("/"):  # absolute-form target
        path = urlsplit(path).path or "/"
    query = scope.get("query_string", b"").decode("latin-1")
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    client = scope.get("client")
    req = Request(scope["method"], path, {}, headers, b"", str(client[0]) if client else "")
    req.headers[":target"] = path + ("?" + query if query else "")
    return req


async def send_response(
    send: Callable,
    resp: Response,
    req: Request,
    *,
    close: bool = False,
    drain: Callable | None = None,
    drain_s: float = DRAIN_S,
) -> None:
    """The answer; with `drain`, the unread rest of the body is read and dropped after the answer went out
    and before the connection closes."""
    headers = [
        (b"content-type", resp.content_type.encode("latin-1")),
        (b"content-length", str(len(resp.body)).encode()),
        (b"x-request-id", req.request_id.encode()),
        (b"server", b"face-agent"),
        *((k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in resp.headers.items()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    start = {"type": "http.response.start", "status": resp.status, "headers": headers}
    waiting = "100-continue" in req.headers.get("expect", "").lower()  # the client holds its body back
    if drain is None or waiting:
        await send(start)
        await send({"type": "http.response.body", "body": resp.body, "more_body": False})
        return
    await answer_then_drain(send, drain, start, resp.body, limit=DRAIN_LIMIT, seconds=drain_s)


def busy_app(router: Router) -> Callable:
    """The answer to a connection beyond max_handlers: its family's rate-limit error (Face++ 403
    CONCURRENCY_LIMIT_EXCEEDED, jumdata 609, JD 10020, native 429) with Retry-After, then close."""

    async def app(scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        req = request_of(scope)
        family = router.family_for(req.path)
        resp = failure(family, TransientError("too many connections", code="busy"), req)
        resp.headers.setdefault("Retry-After", "1")
        await send_response(send, resp, req, close=True, drain=receive, drain_s=BUSY_DRAIN_S)

    return app


def parse_query(query: str) -> dict[str, list[str]]:
    try:
        return parse_qs(query, keep_blank_values=True, max_num_fields=100, errors="strict")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError("bad_argument", f"query string is invalid: {exc}") from exc


def failure(family: Family, exc: Exception, req: Request) -> Response:
    if classify(exc)[0] == "internal":  # a bug or a broken model/device: loud, with the request id
        log.error("internal error in %s %s (request %s)", req.method, req.path, req.request_id, exc_info=exc)
    try:
        return family.error(exc, req)
    except Exception:  # a bug in an error mapper must still not kill the connection silently
        log.exception("error mapping failed for request %s", req.request_id)
        return json_response(500, {"error": {"code": "internal", "message": "internal error"}})
