"""`face-agent serve` under a systemd watchdog: WATCHDOG=1 over a real AF_UNIX socket while the HTTP server
answers its own health probe; withheld once the server stops answering (a handler hangs), resumed when it
answers again. The hang is injected into the real server's health handler; everything else is real."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import yaml

from agent.api.native import NativeApi
from agent.cli.serve import load_serve_config, run_serve


def _pings(sock: socket.socket, seconds: float) -> list[bytes]:
    """Datagrams received during `seconds`."""
    out, end = [], time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            out.append(sock.recv(4096))
        except TimeoutError:
            break
    return out


def test_hung_http_server_stops_the_watchdog_pings(tmp_path: Path, monkeypatch, caplog) -> None:
    hang = threading.Event()
    released = threading.Event()
    original = NativeApi.health

    def health(self, req, p):  # noqa: ANN001, ANN202 - the handler's own signature
        if hang.is_set():
            released.wait(30)  # hangs like a deadlocked handler until the test lets go
        return original(self, req, p)

    monkeypatch.setattr(NativeApi, "health", health)
    cfg_path = tmp_path / "serve.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(tmp_path / "state"),
                "api": {"host": "127.0.0.1", "port": 0, "socket_timeout_s": 1.0},
            }
        )
    )
    cfg = load_serve_config(cfg_path, {})
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    # 2 s watchdog: pings every second while the "http-api" heartbeat (10 s max age) is fresh
    environ = {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "2000000"}
    stop, ready = threading.Event(), threading.Event()
    result: list[object] = []

    def serve() -> None:
        try:
            result.append(run_serve(cfg, environ, stop, lambda url: ready.set()))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertions below
            result.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert ready.wait(120), result
        first = _pings(sock, 4.0)
        assert any(b"READY=1" in m for m in first), first
        assert sum(m == b"WATCHDOG=1" for m in first) >= 2, first

        hang.set()  # the next self-probes time out (1 s) and the heartbeat ages past its 10 s
        _pings(sock, 12.0)
        withheld = _pings(sock, 3.0)
        assert b"WATCHDOG=1" not in withheld, withheld
        assert any("stale heartbeat: http-api" in r.getMessage() for r in caplog.records)

        hang.clear()
        released.set()  # the server answers again: the next probe renews the heartbeat
        resumed = _pings(sock, 6.0)
        assert b"WATCHDOG=1" in resumed, resumed
    finally:
        hang.clear()
        released.set()
        stop.set()
        thread.join(60)
        sock.close()
    assert result == [0], result


@pytest.fixture(autouse=True)
def _no_inherited_systemd_env(monkeypatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "STATE_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
