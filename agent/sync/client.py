"""The edge's HTTP client for a hub's /v1/sync feed: signed GETs with hard bounds.

http.client rather than a third-party client: the requests are three signed GETs, and what matters here
(a response size cap enforced while reading, a total deadline against a hub that drips bytes, certificate
verification against one CA file) is a few lines on top of it.

Every failure is one of two typed errors: HubRefused (the hub answered with a documented error code: the
edge acts on it) or HubUnavailable (down, slow, TLS failure, truncated, garbled, oversized: the edge keeps its
gallery and retries later).
"""

from __future__ import annotations

import http.client
import json
import secrets
import ssl
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from agent.api.auth import native_header
from agent.errors import ConfigError, TransientError
from agent.sync.config import SyncConfig

_CHUNK = 1 << 16


class HubUnavailable(TransientError):
    """No usable answer: the edge keeps its last good gallery and backs off."""

    def __init__(self, message: str, code: str = "hub_unavailable") -> None:
        super().__init__(message, code=code)


class HubRefused(Exception):
    """The hub answered with a documented error (docs/sync.md)."""

    def __init__(self, status: int, code: str, message: str, body: dict) -> None:
        super().__init__(f"hub refused ({status} {code}): {message}")
        self.status, self.code, self.body = status, code, body


def read_secret(cfg: SyncConfig, credentials_dir: str | None) -> str:
    if cfg.secret_file is not None:
        path = cfg.secret_file
    else:
        if not credentials_dir:
            raise ConfigError(
                "sync.secret_credential: $CREDENTIALS_DIRECTORY is not set (systemd LoadCredential)"
            )
        path = Path(credentials_dir) / str(cfg.secret_credential)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"sync: cannot read the device secret from {path}: {exc}") from exc
    secret = lines[0].strip() if lines else ""
    if len(secret) < 16:
        raise ConfigError(f"sync: the device secret in {path} is shorter than 16 characters")
    return secret


class HubClient:
    def __init__(self, cfg: SyncConfig, secret: str) -> None:
        self._cfg, self._secret = cfg, secret
        url = urlsplit(cfg.hub_url.rstrip("/"))
        if url.hostname is None:
            raise ConfigError(f"sync.hub_url {cfg.hub_url!r} has no host")
        self._https = url.scheme == "https"
        self._host, self._port, self._base = url.hostname, url.port, url.path
        self._ctx: ssl.SSLContext | None = None
        if self._https:
            try:
                self._ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"sync.ca_file {cfg.ca_file}: {exc}") from exc

    @property
    def hub(self) -> str:
        """The hub's identity in the gallery (groups.origin)."""
        return self._cfg.hub_url.rstrip("/")

    def _connection(self) -> http.client.HTTPConnection:
        t = self._cfg.timeout_s
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=t, context=self._ctx)
        return http.client.HTTPConnection(self._host, self._port, timeout=t)

    def get(self, path: str, query: dict[str, object] | None = None) -> dict:
        target = self._base + path + ("?" + urlencode(query) if query else "")
        header = native_header(self._cfg.device_id, self._secret, "GET", target, b"", secrets.token_hex(12))
        deadline = time.monotonic() + self._cfg.timeout_s * 3
        conn = self._connection()
        try:
            conn.request("GET", target, headers={"Authorization": header, "Accept": "application/json"})
            _until(conn, deadline, self._cfg.timeout_s)
            resp = conn.getresponse()
            body = self._read(conn, resp, deadline)
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            raise HubUnavailable(f"hub {self.hub}: {type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()
        return self._decode(resp.status, body)

    def _read(
        self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, deadline: float
    ) -> bytes:
        cap = self._cfg.max_response_bytes
        raw = resp.getheader("Content-Length")
        length = int(raw) if raw is not None and raw.isascii() and raw.isdigit() and len(raw) < 19 else None
        if raw is not None and length is None:
            raise HubUnavailable(f"hub answer has a bad Content-Length {raw[:32]!r}", code="hub_garbled")
        if length is not None and length > cap:
            raise HubUnavailable(f"hub answer of {length} bytes exceeds {cap}", code="hub_oversized")
        parts, size = [], 0
        while True:
            _until(conn, deadline, self._cfg.timeout_s)  # every read, so a dripping hub meets the deadline
            chunk = resp.read1(_CHUNK)  # what has arrived, not a blocking fill of the whole chunk
            if not chunk:
                break
            size += len(chunk)
            if size > cap:
                raise HubUnavailable(f"hub answer exceeds {cap} bytes", code="hub_oversized")
            parts.append(chunk)
        body = b"".join(parts)
        if length is not None and len(body) != length:
            raise HubUnavailable(
                f"hub answer truncated ({len(body)} of {length} bytes)", code="hub_truncated"
            )
        return body

    def _decode(self, status: int, body: bytes) -> dict:
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: absurd nesting
            raise HubUnavailable(
                f"hub answered {status} with a body that is not JSON", code="hub_garbled"
            ) from exc
        if not isinstance(data, dict):
            raise HubUnavailable(f"hub answered {status} with JSON that is not an object", code="hub_garbled")
        if status == 200:
            return data
        err = data.get("error")
        if 400 <= status < 500 and isinstance(err, dict) and isinstance(err.get("code"), str):
            raise HubRefused(status, err["code"], str(err.get("message", "")), data)
        raise HubUnavailable(f"hub answered HTTP {status}", code="hub_error")


def _until(conn: http.client.HTTPConnection, deadline: float, timeout: float) -> None:
    """Give the next socket operation the time left before the request's total deadline (at most the idle
    timeout): the socket timeout alone bounds each read, not a hub that sends a byte per timeout."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"hub answer not complete within the total deadline of {timeout * 3:.0f} s")
    if conn.sock is not None:
        conn.sock.settimeout(min(timeout, left))
