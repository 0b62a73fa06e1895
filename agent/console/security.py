"""Console sessions, CSRF and origin checks, login rate limits and security headers.

Hand-written because Starlette's SessionMiddleware keeps the whole session in a signed cookie: a stolen
cookie stays valid until it expires and logging out cannot revoke it. Here the cookie holds only a random
token; the session (its CSRF token, flash messages, expiry) stays in a bounded in-memory store, so logout and
expiry really end it. No library in the project's dependencies offers a bounded server-side store.

- Sessions: 256-bit random tokens, idle and absolute expiry, at most `max_sessions` (the oldest goes).
- CSRF: a per-session random token in every form (hidden field) and fetch (X-CSRF-Token header), compared
  with hmac.compare_digest; and every POST must come from this origin (Origin, else Referer).
- Login attempts: at most `login_attempts_per_ip` per IP and `login_attempts_global` in all per window;
  an IP over its limit is answered 429 without reaching the global count, so one guesser cannot lock
  everyone else out. IPs are the socket peer (no X-Forwarded-For is trusted). Memory is bounded.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

COOKIE = "fa_console"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}


@dataclass
class Session:
    token: str
    user: str
    csrf: str
    created: float
    seen: float
    flash: list[tuple[str, str]] = field(default_factory=list)  # (kind, text), shown once

    def say(self, kind: str, text: str) -> None:
        self.flash = [*self.flash[-19:], (kind, text)]  # bounded: a page shows the last 20


class SessionStore:
    def __init__(
        self, max_sessions: int, ttl_s: float, max_age_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()
        self._max, self._ttl, self._max_age, self._clock = max_sessions, ttl_s, max_age_s, clock

    def create(self, user: str) -> Session:
        now = self._clock()
        session = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32), now, now)
        with self._lock:
            self._sessions[session.token] = session
            while len(self._sessions) > self._max:
                self._sessions.popitem(last=False)
        return session

    def get(self, token: str | None) -> Session | None:
        if not token or len(token) > 100:
            return None
        now = self._clock()
        with self._lock:
            session = self._sessions.get(token)
            if session is None:
                return None
            if now - session.seen > self._ttl or now - session.created > self._max_age:
                del self._sessions[token]
                return None
            session.seen = now
            self._sessions.move_to_end(token)
            return session

    def end(self, token: str | None) -> None:
        with self._lock:
            self._sessions.pop(token or "", None)

    def __len__(self) -> int:
        return len(self._sessions)


class LoginLimiter:
    """Sliding-window attempt counts per IP and in all (see the module doc)."""

    def __init__(
        self,
        per_ip: int,
        global_limit: int,
        window_s: float,
        max_ips: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_ip, self._global, self._window = per_ip, global_limit, window_s
        self._ips: OrderedDict[str, deque[float]] = OrderedDict()
        self._all: deque[float] = deque()
        self._max_ips, self._clock = max_ips, clock
        self._lock = threading.Lock()

    def attempt(self, ip: str) -> float:
        """Count one attempt from `ip`; 0 when it may go ahead, else seconds until it may retry."""
        now = self._clock()
        with self._lock:
            hits = self._ips.pop(ip, None) or deque()
            self._ips[ip] = hits  # most recent last: the least recently seen IP is evicted first
            _expire(hits, now - self._window)
            _expire(self._all, now - self._window)
            while len(self._ips) > self._max_ips:
                self._ips.popitem(last=False)
            if len(hits) >= self._per_ip:
                return max(0.001, hits[0] + self._window - now)
            if len(self._all) >= self._global:
                return max(0.001, self._all[0] + self._window - now)
            hits.append(now)
            self._all.append(now)
            return 0.0


def _expire(hits: deque[float], horizon: float) -> None:
    while hits and hits[0] <= horizon:
        hits.popleft()


def csrf_ok(session: Session, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(session.csrf.encode(), str(sent).encode())


def same_origin(headers: dict[str, str], scheme: str) -> bool:
    """The request's Origin (or, without one, its Referer) names this server: scheme and Host header."""
    host = headers.get("host", "")
    source = headers.get("origin") or headers.get("referer")
    if not host or not source or source == "null":
        return False
    try:
        parts = urlsplit(source)
    except ValueError:
        return False
    return parts.scheme == scheme and parts.netloc.lower() == host.lower()


def loopback_host(host_header: str) -> bool:
    """A Host header naming this machine by a loopback name: the loopback exemption requires it, so a page
    on another site cannot reach the console through DNS rebinding (its Host would be that site's name).
    Only `localhost` itself or a loopback IP literal (`127.0.0.1`, `[::1]`, with or without a port): a
    name such as `127.attacker.example` is a name, and whoever owns it decides what it resolves to."""
    host = host_header.strip()
    if host.startswith("["):  # [v6]:port
        v6, bracket, port = host[1:].partition("]")
        if not bracket or (port and not (port.startswith(":") and port[1:].isdigit())):
            return False
        host = v6
    elif host.count(":") == 1:  # name:port or v4:port
        host, _, port = host.partition(":")
        if not port.isdigit():
            return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
