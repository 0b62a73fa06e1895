"""Serving the agent's ASGI applications: uvicorn with its h11 protocol, plus the limits the agent keeps.

uvicorn parses HTTP/1.1 (h11) and runs the application; chosen over hypercorn/granian because it is the most
used ASGI server, pure Python with h11 (no compiled parser needed on a Pi) and Starlette's own reference.
What it has no setting for is added here by a subclass of its h11 protocol (hand-written because no
maintained library does these; the uvicorn range in pyproject.toml is the one this was tested on):
- a connection limit whose overflow is answered by the application, in the caller's own error format,
  (uvicorn's `limit_concurrency` answers a bare 503), and a bound on such answers in flight;
- a deadline for a request's head: a client that sends part of a request line and stops (or sends one byte
  a second) is closed after `socket_timeout_s`; uvicorn's keep-alive timer stops at the first byte;
- a TLS handshake per connection bounded by the same timeout (asyncio's start_tls; uvicorn hands TLS to
  create_server, whose handshake timeout is asyncio's 60 s), counted against the limit from the first byte;
- every read of a body and every write of an answer within the same timeout, for every application
  (uvicorn waits for ever on a client that stops sending its body or stops reading), and a handle in the
  request scope (`scope["extensions"][CONNECTION]`) to drop a connection without an answer.
The listening socket is bound and listening before the server thread starts, so `start()` needs no wait: a
client that connects at once waits in the backlog.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

CONNECTION = "face_agent.connection"  # scope["extensions"] key of the connection handle

_EARLY_LIMIT = 1024 * 1024
MIN_BODY_RATE = 32 * 1024  # bytes/s a body must average: 8 MB may take 256 s beyond the socket timeout

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


@dataclass(frozen=True)
class Limits:
    max_connections: int  # served at once; one more is given to `busy_app`
    socket_timeout_s: float  # a request head, a TLS handshake, an idle keep-alive connection
    busy_timeout_s: float = 1.0  # the head (and handshake) of a connection answered busy
    max_busy: int = 32  # busy answers in flight; beyond, a connection is closed unanswered


class Gate:
    """Connection counts of one server. Touched only on the server's event loop thread."""

    def __init__(self, limits: Limits, on_refused: Callable[[], None] | None = None) -> None:
        self.limits = limits
        self._on_refused = on_refused
        self.active = 0
        self.busy = 0
        self.refused = 0  # connections beyond max_connections (answered busy or closed)
        self.handshake_failures = 0

    def admit(self) -> str | None:
        """'slot', 'busy' (answer with the busy app), or None (close at once)."""
        if self.active < self.limits.max_connections:
            self.active += 1
            return "slot"
        self.refused += 1
        if self._on_refused is not None:
            self._on_refused()
        if self.busy < self.limits.max_busy:
            self.busy += 1
            return "busy"
        return None

    def release(self, kind: str | None) -> None:
        if kind == "slot":
            self.active -= 1
        elif kind == "busy":
            self.busy -= 1


class ConnectionHandle:
    """What an application may do to its connection beyond the ASGI messages."""

    def __init__(self, protocol: Any, busy: bool) -> None:
        self._protocol = protocol
        self.busy = busy

    def abort(self) -> None:
        """Close without an answer; the slot is free before the client sees the close."""
        self._protocol.drop()


def _protocol_class() -> type:
    """The subclass of uvicorn's h11 protocol, built on first use so that importing agent.ops stays light."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class LimitedH11Protocol(H11Protocol):
        def __init__(
            self, *args: Any, gate: Gate, tls: ssl.SSLContext | None, busy_app: ASGIApp, **kwargs: Any
        ) -> None:
            super().__init__(*args, **kwargs)
            self._gate = gate
            self._tls = tls
            self._target = self.app
            self._busy_app = busy_app
            self._kind: str | None = None
            self._made = False
            self._raw: asyncio.BaseTransport | None = None  # the TCP transport while TLS is set up
            self._timer: asyncio.TimerHandle | None = None
            self._armed: object = None
            self._handle: ConnectionHandle | None = None
            self._early = b""  # bytes decrypted in the handshake's last read, before start_tls returned
            self._body_cycle: object = None  # the request whose body deadline is `_body_deadline`
            self._body_deadline = 0.0

        def _timeout(self) -> float:
            limits = self._gate.limits
            return limits.socket_timeout_s if self._kind != "busy" else limits.busy_timeout_s

        # -- connection ----------------------------------------------------------------------------------
        def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
            self._kind = self._gate.admit()
            if self._kind is None:
                transport.abort()  # type: ignore[attr-defined]
                return
            if self._tls is None:
                self._accept(transport)  # type: ignore[arg-type]
            else:  # nothing reaches h11 before the handshake: start_tls takes the bytes from here on
                self._raw = transport
                transport.pause_reading()  # type: ignore[attr-defined]
                self.loop.create_task(self._handshake(transport))  # type: ignore[arg-type]

        async def _handshake(self, transport: asyncio.Transport) -> None:
            timeout = self._timeout()
            try:
                secure = await self.loop.start_tls(
                    transport,
                    self,
                    self._tls,
                    server_side=True,
                    ssl_handshake_timeout=timeout,
                    ssl_shutdown_timeout=timeout,  # a close waits this long for the peer's close_notify
                )
            except Exception as exc:  # timeouts, resets, a client speaking plain HTTP: close, no answer
                self._gate.handshake_failures += 1
                log.debug("TLS handshake failed: %s", exc)
                self._release()
                transport.abort()
                return
            if secure is None or secure.is_closing() or self._kind is None:
                self._release()
                transport.abort()
                return
            self._raw = None
            self._accept(secure)

        def _accept(self, transport: asyncio.Transport) -> None:
            self._made = True
            super().connection_made(transport)
            self._handle = ConnectionHandle(self, busy=self._kind == "busy")
            self.app = self._busy_app if self._kind == "busy" else self._target
            self.app = functools.partial(self._run, self.app)
            self._arm()
            if self._early:
                early, self._early = self._early, b""
                self.data_received(early)

        async def _run(self, app: ASGIApp, scope: Scope, receive: Any, send: Any) -> None:
            """Every application's body reads and answer writes bounded in time (the console's forms as much
            as the families' bodies); past the bound the connection is cut and the app sees a disconnect.
            Timers, not wait_for: no task per read or write."""
            scope.setdefault("extensions", {})[CONNECTION] = self._handle
            cycle = self.cycle

            async def bounded_receive() -> Any:
                if not cycle.more_body and not cycle.body:  # body complete: only a disconnect can come
                    return await receive()
                cut = self.loop.call_later(self._read_wait(cycle), self.drop)
                try:
                    return await receive()
                finally:
                    cut.cancel()

            async def bounded_send(message: Any) -> None:
                if not self.flow.write_paused:  # uvicorn's send awaits only while writing is paused
                    await send(message)
                    return
                cut = self.loop.call_later(self._timeout(), self.drop)  # a client not reading its answer
                try:
                    await send(message)
                finally:
                    cut.cancel()

            await app(scope, bounded_receive, bounded_send)

        def _read_wait(self, cycle: Any) -> float:
            """At most the socket timeout per read, and the whole body by socket timeout + length / MIN_RATE:
            a client trickling a byte every few seconds is cut too."""
            now = self.loop.time()
            if self._body_cycle is not cycle:
                self._body_cycle = cycle
                length = 0
                for name, value in cycle.scope["headers"]:
                    if name == b"content-length" and value.isdigit():
                        length = int(value)
                self._body_deadline = now + self._timeout() + length / MIN_BODY_RATE
            return max(0.0, min(self._timeout(), self._body_deadline - now))

        def connection_lost(self, exc: Exception | None) -> None:
            self._release()
            if self._timer is not None:
                self._timer.cancel()
            if self._made:
                super().connection_lost(exc)

        def _release(self) -> None:
            self._gate.release(self._kind)
            self._kind = None

        def drop(self) -> None:
            """Cut the connection now (abort: a close would wait for a client that does not read)."""
            self._release()
            transport = self.transport if self._made else self._raw
            if transport is not None:
                transport.abort()

        def shutdown(self) -> None:
            idle = self.cycle is None or self.cycle.response_complete
            if idle and self.transport.get_write_buffer_size() == 0:
                self.transport.abort()  # nothing left to send; over TLS a close would wait for the peer
                return
            super().shutdown()

        def timeout_keep_alive_handler(self) -> None:
            # uvicorn's idle timer: cut (as our own deadline does), so the slot is free at once over TLS too
            if not self.transport.is_closing():
                self.drop()

        # -- request heads -------------------------------------------------------------------------------
        def data_received(self, data: bytes) -> None:
            if not self._made:
                self._early += data
                if len(self._early) > _EARLY_LIMIT:
                    self._early = b""
                    self.drop()
                return
            try:
                super().data_received(data)
            except UnicodeDecodeError:  # a request target that is not ASCII (h11 lets bytes through)
                if self.conn.our_state is h11.SEND_RESPONSE:
                    self.send_400_response("Invalid HTTP request received.")
                else:
                    self.transport.close()

        def on_response_complete(self) -> None:
            if self.transport.is_closing():  # answered with Connection: close: bound the flush
                self.loop.call_later(self._timeout(), self.drop)
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def _arm(self) -> None:
            """Close unless a new request head has arrived in time (idle or partial heads alike)."""
            if self._timer is not None:
                self._timer.cancel()
            self._armed = self.cycle
            self._timer = self.loop.call_later(self._timeout(), self._head_deadline)

        def _head_deadline(self) -> None:
            self._timer = None
            idle = self.cycle is None or self.cycle.response_complete
            if self.cycle is self._armed and idle and not self.transport.is_closing():
                self.drop()

    return LimitedH11Protocol


class HttpServer:
    """One ASGI application on one listening socket, served by uvicorn in a thread with its own loop.

    `start()` raises OSError when the address cannot be bound; `stop()` waits for requests in progress up to
    its timeout."""

    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        limits: Limits,
        *,
        busy_app: ASGIApp | None = None,
        tls: ssl.SSLContext | None = None,
        name: str = "http",
        backlog: int = 64,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.host, self.requested_port = host, port
        self.limits = limits
        self.gate = Gate(limits, on_refused)
        self.tls = tls
        self.name = name
        self.backlog = backlog
        self._busy_app = busy_app or _closing_busy_app
        self._sock: socket.socket | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError(f"{self.name} server not started")
        return int(self._sock.getsockname()[1])

    def start(self) -> HttpServer:
        import uvicorn  # a dependency of every install; imported here so agent.ops stays light

        # uvicorn says "Started server process" / "Shutting down" at INFO for every server: our own lines
        # say what started; its warnings and errors still reach the log.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto must say TCP: asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and
        # without it an answer's head and body (two writes) wait for the client's delayed ACK (~40 ms).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.requested_port))
            sock.listen(self.backlog)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._sock = sock
        protocol = functools.partial(_protocol_class(), gate=self.gate, tls=self.tls, busy_app=self._busy_app)
        config = uvicorn.Config(
            self.app,
            http=protocol,  # type: ignore[arg-type]
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=True,
            timeout_keep_alive=max(1, int(self.limits.socket_timeout_s)),
            proxy_headers=False,  # the socket's peer is the client: no X-Forwarded-For is trusted
            forwarded_allow_ips=[],
            timeout_graceful_shutdown=5,
            ws="none",
            backlog=self.backlog,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name=f"{self.name}-server", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException:  # SystemExit from uvicorn's startup included: say it, the thread ends
            log.exception("%s server stopped on an error", self.name)

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop accepting, finish requests in progress (up to `timeout`), close. True when it ended."""
        if self._server is None or self._thread is None:
            return True
        self._server.config.timeout_graceful_shutdown = max(0.1, timeout)
        self._server.should_exit = True
        self._thread.join(timeout + 1.0)
        stopped = not self._thread.is_alive()
        if not stopped:
            self._server.force_exit = True
            log.warning("%s server did not stop within %.1f s", self.name, timeout)
        if self._sock is not None:
            self._sock.close()
        return stopped


async def answer_then_drain(
    send: Callable[[Any], Awaitable[None]],
    receive: Callable[[], Awaitable[Any]],
    start: dict[str, Any],
    body: bytes,
    *,
    limit: int,
    seconds: float,
) -> None:
    """An early answer (a refused body, a busy server) whose request body is still on its way: the answer
    goes out first, then the rest of the body is read and dropped (bounded in bytes and seconds) before the
    answer ends and the server closes, so a client that sends its whole body before reading (requests,
    http.client) gets the answer instead of a reset."""
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": True})
    loop = asyncio.get_running_loop()
    deadline, left = loop.time() + seconds, limit
    while left > 0 and (wait := deadline - loop.time()) > 0:
        try:
            message = await asyncio.wait_for(receive(), wait)
        except asyncio.TimeoutError:
            break
        if message["type"] != "http.request":
            break
        left -= len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _closing_busy_app(scope: Scope, receive: Any, send: Any) -> None:
    """Default answer beyond max_connections: 503, Retry-After, close."""
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [(b"content-type", b"text/plain"), (b"retry-after", b"1"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": b"busy\n"})
