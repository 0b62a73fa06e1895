"""The console's outer ASGI layer: security headers on every answer, and the request body's limits.

Pure ASGI (not Starlette middleware) so that it also covers answers Starlette makes itself (404, 405, 400
for a form with too many parts) and static files. A POST body is refused from its Content-Length before any
of it is read when over `max_body` (413), or when it has no length (411: chunked); otherwise it is read
here whole, each read waiting at most `timeout_s`, so a client that stalls mid-body is dropped without an
answer (through the server's connection handle, agent/ops/http.py) instead of holding a connection
forever. The app then parses the body from memory. A refused body is still read and dropped (bounded in
bytes and time) so that a client sending it all before reading gets the answer, not a reset.
"""

from __future__ import annotations

import asyncio
import time

from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.console.security import SECURITY_HEADERS
from agent.ops.http import CONNECTION

DRAIN_LIMIT = 256 * 1024 * 1024
DRAIN_S = 5.0


class _Stalled(Exception):
    """The client stopped sending its body, or went away."""


class Limits:
    def __init__(self, app: ASGIApp, max_body: int, timeout_s: float) -> None:
        self.app, self.max_body, self.timeout_s = app, max_body, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD"):
            length = dict(scope["headers"]).get(b"content-length")
            refusal = self._refusal(length)
            if refusal is not None:
                await refusal(scope, receive, send)
                size = int(length) if length and length.isdigit() else 0
                await _drain(receive, min(DRAIN_LIMIT, size), DRAIN_S)
                return
            try:
                body = await self._read(receive, int(length or 0))
            except _Stalled:
                handle = scope.get("extensions", {}).get(CONNECTION)
                if handle is not None:
                    handle.abort()
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, _secured(send))

    def _refusal(self, length: bytes | None) -> Response | None:
        if length is None:
            response = PlainTextResponse("Content-Length is required", status_code=411)
        elif not length.isdigit() or int(length) > self.max_body:
            response = PlainTextResponse(f"body larger than {self.max_body} bytes", status_code=413)
        else:
            return None
        response.headers["Connection"] = "close"
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    async def _read(self, receive: Receive, length: int) -> bytes:
        chunks, got = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except asyncio.TimeoutError as exc:
                raise _Stalled from exc
            if message["type"] != "http.request":
                raise _Stalled
            chunks.append(message.get("body", b""))
            got += len(chunks[-1])
            if got > length:  # more than announced: h11 refuses this itself; never buffer past the limit
                raise _Stalled
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body read above, once; then the server's own receive (for a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _secured(send: Send) -> Send:
    async def send_secured(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {k.lower() for k, _ in message.get("headers", [])}
            extra = [
                (k.lower().encode(), v.encode())
                for k, v in SECURITY_HEADERS.items()
                if k.lower().encode() not in present
            ]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return send_secured


async def _drain(receive: Receive, limit: int, seconds: float) -> None:
    left, deadline = limit, time.monotonic() + seconds
    try:
        while left > 0:
            message = await asyncio.wait_for(receive(), max(0.01, deadline - time.monotonic()))
            if message["type"] != "http.request":
                return
            left -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return
    except asyncio.TimeoutError:
        return
