"""The console on the real API server over loopback, and a small real HTTP client (http.client) for it."""

from __future__ import annotations

import http.client
import re
import secrets
import ssl
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import yaml
from test_api_support import Running as ApiRunning

from agent.api import ApiServer, build_context
from agent.api.config import ApiConfig
from agent.console import ConsoleDeps, build_console
from agent.console.config import ConsoleConfig
from agent.console.passwords import write_password
from agent.gallery import Gallery, GalleryConfig

PASSWORD = "correct horse battery"
KEY, SECRET = "console-key", "s3cret-of-the-key"
JD_KEY, JD_SECRET = "jd-only-key", "s3cret-of-jd-only"
ROOT = Path(__file__).resolve().parent.parent
FR = "faces/face_recognition/examples"
HAMILTON = f"{FR}/short_hamilton_clip.mp4"
LIN_PHOTO = f"{FR}/lin-manuel-miranda.png"


def agent_config(
    tmp: Path,
    data_dir: Path,
    console: dict[str, Any] | None = None,
    api: dict[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """A `face-agent run` config: the Hamilton clip looped in real time on camera "door", the API on a free
    loopback port with the console enabled, and a console password set in the state directory."""
    state = tmp / "state"
    state.mkdir(parents=True, exist_ok=True)
    write_password(state / "console-password", PASSWORD)
    camera = {
        "id": "door",
        "source": str(data_dir / HAMILTON),
        "realtime": True,
        "loop": True,
        "max_fps": 6,
        "min_face_px": 30,
    }
    cfg = {
        "state_dir": str(state),
        "metrics": {"enabled": False},
        "log": {"level": "WARNING", "format": "text"},
        "recognition": {"group_id": "door"},
        "cameras": [camera],
        "api": {"host": "127.0.0.1", "port": 0, "credentials": credentials(tmp), **(api or {})},
        "console": {"enabled": True, **(console or {})},
        **extra,
    }
    path = tmp / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_agent(
    tmp: Path,
    data_dir: Path,
    console: dict[str, Any] | None = None,
    api: dict[str, Any] | None = None,
    **extra: Any,
):
    """A running AgentApp (cameras, API, console); the caller stops it."""
    from agent.app import AgentApp
    from agent.config import load_agent_config

    app = AgentApp(load_agent_config(agent_config(tmp, data_dir, console, api, **extra), {}), {})
    try:
        app.start()
    except BaseException:
        app.stop("start-up failed")
        raise
    return app


@dataclass
class Running(ApiRunning):
    deps: ConsoleDeps

    @property
    def port(self) -> int:
        return self.server.port


def credentials(tmp: Path) -> list[dict[str, Any]]:
    """One key that may log in (native allowed) and one that may not (JD only), with their secret files."""
    (tmp / "key.secret").write_text(SECRET + "\n")
    (tmp / "jd.secret").write_text(JD_SECRET + "\n")
    return [
        {"key": KEY, "secret_file": str(tmp / "key.secret")},
        {"key": JD_KEY, "secret_file": str(tmp / "jd.secret"), "apis": ["jd"]},
    ]


def start_console(
    engine, tmp: Path, observer=None, tls: tuple[Path, Path] | None = None, **console_kw: Any
) -> Running:
    """A real ApiServer with the console mounted at /console (no cameras), a password set and API keys."""
    api = ApiConfig(
        host="127.0.0.1",
        port=0,
        credentials=credentials(tmp),
        replay_store=tmp / "replay.sqlite3",
        tls_cert_file=tls[0] if tls else None,
        tls_key_file=tls[1] if tls else None,
    )
    state = tmp / "state"
    state.mkdir(exist_ok=True)
    write_password(state / "console-password", PASSWORD)
    gallery = Gallery(GalleryConfig(path=state / "gallery"))
    gallery.create_group(group_id="door")
    ctx = build_context(api, engine, gallery)
    cfg = ConsoleConfig(enabled=True, **console_kw)
    deps = ConsoleDeps(
        ctx=ctx,
        config=cfg,
        api=api,
        state_dir=state,
        api_secrets={KEY: SECRET, JD_KEY: JD_SECRET},
        group_id="door",
        observer=observer,
        config_in_force=lambda: {"api": api.model_dump(mode="json"), "console": cfg.model_dump(mode="json")},
    )
    server = ApiServer(api, ctx, mounts=[("/console", build_console(deps))]).start()
    return Running(server, gallery, deps)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


@dataclass
class Client:
    """One browser-like client: keeps the session cookie, sends Origin on POSTs, from `source_ip`."""

    port: int
    source_ip: str = "127.0.0.1"
    host: str | None = None  # the Host header; default 127.0.0.1:port
    cookie: str | None = None
    origin: str | None = None  # default: this server's own origin
    extra: dict[str, str] = field(default_factory=dict)
    tls: ssl.SSLContext | None = None  # HTTPS with this client context

    @property
    def own_origin(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host or f'127.0.0.1:{self.port}'}"

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Reply:
        source = (self.source_ip, 0)
        if self.tls is not None:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=60, source_address=source, context=self.tls
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60, source_address=source)
        try:
            hdrs = {"Host": self.host or f"127.0.0.1:{self.port}", **self.extra, **(headers or {})}
            if self.cookie:
                hdrs["Cookie"] = f"fa_console={self.cookie}"
            if method == "POST":
                hdrs.setdefault("Origin", self.origin or self.own_origin)
                hdrs.setdefault("Content-Length", str(len(body)))
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            reply = Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()
        cookie = reply.headers.get("set-cookie", "")
        match = re.match(r"fa_console=([^;]*)", cookie)
        if match:
            self.cookie = match.group(1) or None
        return reply

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post_form(self, path: str, fields: dict[str, str], headers: dict[str, str] | None = None) -> Reply:
        body = urlencode(fields).encode()
        hdrs = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        return self.request("POST", path, body, hdrs)

    def post_multipart(self, path: str, fields: dict[str, str], files: list[tuple[str, str, bytes]]) -> Reply:
        boundary = uuid.uuid4().hex
        parts: list[bytes] = []
        for name, value in fields.items():
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
            )
        for name, filename, data in files:
            head = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            )
            parts.append(head.encode() + data + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self.request("POST", path, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})

    def login(self, password: str = PASSWORD, key: str = "") -> Reply:
        return self.post_form("/console/login", {"key": key, "password": password})

    def csrf(self, page: str = "/console/people") -> str:
        reply = self.get(page)
        match = re.search(r'name="csrf" value="([^"]+)"', reply.text)
        assert match, f"no CSRF token on {page} ({reply.status})"
        return match.group(1)


def redirect_path(reply: Reply) -> str:
    return urlsplit(reply.headers.get("location", "")).path


def random_text() -> str:
    return secrets.token_urlsafe(16)
