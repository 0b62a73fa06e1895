"""Helpers shared by the tests of agent/api (no tests here): one engine per session, a real server on
loopback, a small HTTP client and the vendors' signatures."""

from __future__ import annotations

import base64
import functools
import hashlib
import http.client
import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from agent.api import ApiConfig, ApiServer, build_context, native_header
from agent.config import EngineConfig
from agent.gallery import Gallery, GalleryConfig
from agent.inference.engine import FaceEngine

FR = "faces/face_recognition/examples"
OBAMA = f"{FR}/knn_examples/train/obama/obama.jpg"
OBAMA2 = f"{FR}/knn_examples/train/obama/obama2.jpg"
OBAMA_SMALL = f"{FR}/obama_small.jpg"
BIDEN = f"{FR}/knn_examples/train/biden/biden2.jpg"
BIDEN_TALL = f"{FR}/biden.jpg"  # 970x2204: over JD compare's 2048 px
OBAMA_AND_BIDEN = f"{FR}/knn_examples/test/obama_and_biden.jpg"
DOGS = "faces/dlib/examples/faces/dogs.jpg"  # no human face
WEBP = "faces/deepface/images/img47.jpg"  # really WebP

KEY, SECRET = "test-key", "test-secret-123456"
DISABLED_KEY, NATIVE_ONLY_KEY, JD_ONLY_KEY = "disabled-key", "native-only", "jd-only"


@functools.cache
def shared_engine() -> FaceEngine:
    """One engine for the whole session (module-level cache: several test modules use it)."""
    return FaceEngine(EngineConfig())


def read(data_dir: Path, rel: str) -> bytes:
    return (data_dir / rel).read_bytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def api_config(tmp: Path, **overrides: Any) -> ApiConfig:
    tmp.mkdir(parents=True, exist_ok=True)
    creds = []
    for key, secret, extra in (
        (KEY, SECRET, {}),
        (DISABLED_KEY, SECRET, {"enabled": False}),
        (NATIVE_ONLY_KEY, SECRET, {"apis": ["native"]}),
        (JD_ONLY_KEY, SECRET, {"apis": ["jd"]}),
    ):
        path = tmp / f"{key}.secret"
        path.write_text(secret + "\n")
        creds.append({"key": key, "secret_file": str(path), **extra})
    base: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "credentials": creds}
    base.update(overrides)
    return ApiConfig.model_validate(base)


@dataclass
class Running:
    server: ApiServer
    gallery: Gallery

    @property
    def ctx(self):
        return self.server.ctx

    def close(self) -> None:
        self.server.stop()
        self.gallery.close()


def start(tmp: Path, gallery_kw: dict[str, Any] | None = None, **overrides: Any) -> Running:
    gallery = Gallery(GalleryConfig(path=tmp / "gallery", save_interval_s=0, **(gallery_kw or {})))
    cfg = api_config(tmp / "cfg", **overrides)
    server = ApiServer(cfg, build_context(cfg, shared_engine(), gallery)).start()
    return Running(server, gallery)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    run: Running,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", run.server.port, timeout=timeout)
    try:
        conn.request(method, path, body=body if method != "GET" or body else None, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def post_json(run: Running, path: str, payload: Any, headers: dict[str, str] | None = None) -> Reply:
    return call(
        run,
        "POST",
        path,
        json.dumps(payload).encode(),
        {"Content-Type": "application/json", **(headers or {})},
    )


def post_form(run: Running, path: str, fields: dict[str, Any]) -> Reply:
    body = urlencode(fields).encode()
    return call(run, "POST", path, body, {"Content-Type": "application/x-www-form-urlencoded"})


def post_multipart(run: Running, path: str, fields: dict[str, Any], files: dict[str, bytes]) -> Reply:
    boundary = uuid.uuid4().hex
    parts = []
    for k, v in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    for k, data in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{k}.jpg"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return call(run, "POST", path, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def native(
    run: Running,
    method: str,
    path: str,
    payload: Any = None,
    key: str = KEY,
    secret: str = SECRET,
    ts_ms: int | None = None,
    nonce: str | None = None,
) -> Reply:
    body = json.dumps(payload).encode() if payload is not None else b""
    auth = native_header(key, secret, method, path, body, nonce or uuid.uuid4().hex, ts_ms)
    headers = {"Authorization": auth}
    if payload is not None:
        headers["Content-Type"] = "application/json"
    return call(run, method, path, body, headers)


_ts_lock = threading.Lock()
_last_ts = [0]


def unique_ms() -> int:
    """A fresh millisecond timestamp per call: JD / jumdata signatures cover only the timestamp."""
    with _ts_lock:
        now = max(int(time.time() * 1000), _last_ts[0] + 1)
        _last_ts[0] = now
        return now


def jd_auth(key: str = KEY, secret: str = SECRET, ts_ms: int | None = None) -> dict[str, str]:
    ts = str(ts_ms if ts_ms is not None else unique_ms())
    return {"appkey": key, "timestamp": ts, "sign": hashlib.md5((secret + ts).encode()).hexdigest()}


def jumdata_auth(key: str = KEY, secret: str = SECRET, ts_ms: int | None = None) -> dict[str, str]:
    ts = str(ts_ms if ts_ms is not None else unique_ms())
    return {"appId": key, "timestamp": ts, "sign": hashlib.sha256((key + secret + ts).encode()).hexdigest()}


def facepp_auth(key: str = KEY, secret: str = SECRET) -> dict[str, str]:
    return {"api_key": key, "api_secret": secret}


def gallery_snapshot(gallery: Gallery) -> list[tuple]:
    """Everything a request could change: groups, persons and face ids."""
    out = []
    for g in gallery.list_groups():
        persons = gallery.list_persons(g.group_id)
        faces = sorted(f.face_id for f in gallery.list_faces(g.group_id, limit=10000))
        out.append(
            (g.group_id, g.group_name, g.info, sorted((p.outer_id, p.user_info) for p in persons), faces)
        )
    return sorted(out)


class HeldEngine:
    """Occupies `n` engine slots (real gate, real waiting) until released: makes queue-full and
    wait-timeout answers deterministic."""

    def __init__(self, run: Running, n: int) -> None:
        self._release = threading.Event()
        self._started = threading.Barrier(n + 1, timeout=10)
        self._threads = [threading.Thread(target=self._hold, args=(run,)) for _ in range(n)]
        for t in self._threads:
            t.start()
        self._started.wait()

    def _hold(self, run: Running) -> None:
        def block() -> None:
            self._started.wait()
            self._release.wait(30)

        run.ctx.gate.run(block)

    def release(self) -> None:
        self._release.set()
        for t in self._threads:
            t.join(10)
