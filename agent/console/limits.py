"""The console's outer ASGI layer: security headers on every answer, and the request body's limits.

Pure ASGI (not Starlette middleware) so that it also covers answers Starlette makes itself (404, 405, 400
for a form with too many parts) and static files. A POST body is refused from its Content-Length before any
of it is read when over its limit (413), or when it has no length (411: chunked). The limit is
`max_body` (console.max_upload_bytes) for a request with a session, and `ANONYMOUS_BODY` (64 KiB: a login
form) without one: the session is looked up from the cookie first, so a client that has not logged in
cannot make the device buffer an upload. Otherwise the body is read here, each read waiting at most
`timeout_s`, so a client that stalls mid-body is dropped without an answer (through the server's
connection handle, agent/ops/http.py) instead of holding a connection forever; the chunks read are handed
on to the app one by one as they came (not joined into a second copy). A refusal is sent as its head and
body with more to come, then the rest of the refused body is read and dropped (bounded in bytes and time),
then the response ends and the server closes the connection: a client that sends its whole body before
reading gets the answer, not a reset (as agent/api/asgi.py send_response(drain=...)).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.console.security import SECURITY_HEADERS
from agent.ops.http import CONNECTION, answer_then_drain

DRAIN_LIMIT = 256 * 1024 * 1024
DRAIN_S = 5.0
ANONYMOUS_BODY = 64 * 1024  # a request without a session: a login form, not an upload


class _Stalled(Exception):
    """The client stopped sending its body, or went away."""


class Limits:
    def __init__(
        self,
        app: ASGIApp,
        max_body: int,
        timeout_s: float,
        session_of: Callable[[Request], object | None] | None = None,
        anonymous_body: int = ANONYMOUS_BODY,
    ) -> None:
        self.app, self.max_body, self.timeout_s = app, max_body, timeout_s
        self.session_of, self.anonymous_body = session_of, anonymous_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD"):
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            refusal = self._refusal(length, self._limit(scope))
            if refusal is not None:
                waiting = b"100-continue" in headers.get(b"expect", b"").lower()  # it holds its body back
                await _refuse(refusal, receive, send, drain=not waiting)
                return
            try:
                chunks = await self._read(receive, int(length or 0))
            except _Stalled:
                handle = scope.get("extensions", {}).get(CONNECTION)
                if handle is not None:
                    handle.abort()
                return
            receive = _replay(chunks, receive)
        await self.app(scope, receive, _secured(send))

    def _limit(self, scope: Scope) -> int:
        """The body limit of this request: the upload limit with a session, a login form's without."""
        if self.session_of is None or self.session_of(Request(scope)) is not None:
            return self.max_body
        return min(self.max_body, self.anonymous_body)

    def _refusal(self, length: bytes | None, limit: int) -> Response | None:
        if length is None:
            response = PlainTextResponse("Content-Length is required", status_code=411)
        elif not length.isdigit() or int(length) > limit:
            text = f"body larger than {limit} bytes"
            if limit < self.max_body:
                text += " (log in first: uploads need a session)"
            response = PlainTextResponse(text, status_code=413)
        else:
            return None
        response.headers["Connection"] = "close"
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    async def _read(self, receive: Receive, length: int) -> deque[bytes]:
        chunks: deque[bytes] = deque()
        got = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except asyncio.TimeoutError as exc:
                raise _Stalled from exc
            if message["type"] != "http.request":
                raise _Stalled
            chunk = message.get("body", b"")
            got += len(chunk)
            if got > length:  # more than announced: h11 refuses this itself; never buffer past the limit
                raise _Stalled
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks


def _replay(chunks: deque[bytes], receive: Receive) -> Receive:
    """The body read above, chunk by chunk as it came (each let go once handed on); then the server's own
    receive (for a disconnect)."""
    done = False

    async def replay() -> Message:
        nonlocal done
        if done:
            return await receive()
        body = chunks.popleft() if chunks else b""
        done = not chunks
        return {"type": "http.request", "body": body, "more_body": not done}

    return replay


async def _refuse(response: Response, receive: Receive, send: Send, *, drain: bool) -> None:
    """The refusal, then (with `drain`) the unread rest of the body dropped before the response ends and the
    server closes the connection."""
    start = {"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers}
    if not drain:
        await send(start)
        await send({"type": "http.response.body", "body": response.body, "more_body": False})
        return
    await answer_then_drain(send, receive, start, response.body, limit=DRAIN_LIMIT, seconds=DRAIN_S)


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


