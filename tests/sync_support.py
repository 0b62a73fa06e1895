"""Sync test helpers: a CA and certificates made with the openssl CLI, agent processes, HTTP calls."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from agent.api.auth import native_header

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_ca(tmp: Path, host: str = "127.0.0.1") -> dict[str, Path]:
    """A throw-away CA and a server certificate for `host` (IP SAN), with the openssl command line."""
    tmp.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (
        tmp / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    ext = tmp / "san.ext"
    ext.write_text(f"subjectAltName=IP:{host}\nextendedKeyUsage=serverAuth\n")
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True, timeout=60)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
        "-days", "2", "-subj", "/CN=face-agent test CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={host}")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(ext))  # fmt: skip
    return {"ca": ca, "cert": cert, "key": key}


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(json.loads(json.dumps(data, default=str))))
    return path


def agent_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent", *args]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        agent_cmd(*args), capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


class Proc:
    """An agent process with its log in a file; stop() is SIGTERM then SIGKILL, bounded."""

    def __init__(self, log: Path, *args: str) -> None:
        self.log_path = log
        self._log = log.open("wb")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            agent_cmd(*args), stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return int(self.proc.returncode)


def wait_for(predicate, timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; the deadline is a bound, not a synchronisation."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def wait_port(port: int, proc: Proc, timeout: float = 120) -> None:
    def up() -> bool:
        if proc.proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.proc.returncode}):\n{proc.log()[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    try:
        wait_for(up, timeout, f"port {port}", step=0.1)
    except BaseException:
        proc.stop()  # never leave a process behind a failed start
        raise


def request(
    port: int,
    method: str,
    path: str,
    payload: Any = None,
    *,
    ca: Path | None = None,
    key: str | None = None,
    secret: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict]:
    """One HTTP(S) request; `key`/`secret` sign it the native way."""
    body = json.dumps(payload).encode() if payload is not None else b""
    hdrs = dict(headers or {})
    if payload is not None:
        hdrs["Content-Type"] = "application/json"
    if key is not None and secret is not None:
        hdrs["Authorization"] = native_header(key, secret, method, path, body, uuid.uuid4().hex)
    if ca is not None:
        ctx = ssl.create_default_context(cafile=str(ca))
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=30, context=ctx
        )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body, hdrs)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(data)
    except ValueError:
        return resp.status, {"raw": data.decode(errors="replace")}


class MqttCollector:
    """Every message on `topic` (wildcards allowed) from a real broker: (topic, JSON or None, received at)."""

    def __init__(self, port: int, topic: str) -> None:
        import threading

        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, Any, float]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"collector-{uuid.uuid4().hex[:8]}")
        self._client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        assert self._subscribed.wait(10), "no SUBACK from the broker"

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            body = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            body = None
        with self._lock:
            self.messages.append((msg.topic, body, time.time()))

    def find(self, pred) -> list[tuple[str, Any, float]]:
        with self._lock:
            return [m for m in self.messages if pred(*m)]

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
