"""sd_notify over a real AF_UNIX datagram socket, the heartbeat watchdog, credentials, and the unit file."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.ops.systemd import (
    HeartbeatRegistry,
    Notifier,
    StatusReporter,
    WatchdogPinger,
    load_credential,
    watchdog_interval,
)

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "face-agent.service"
EXEC_START = "ExecStart=/opt/face-agent/venv/bin/face-agent run --config /etc/face-agent/config.yaml"


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2.0)
    return sock


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    assert len(path) < 100, "tmp_path too long for an AF_UNIX address"
    sock = _receiver(path)
    yield sock, path
    sock.close()


def _drain(sock: socket.socket) -> list[bytes]:
    sock.setblocking(False)
    out = []
    try:
        while True:
            out.append(sock.recv(4096))
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2.0)
    return out


def test_exact_datagrams_on_a_path_socket(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready()
    assert sock.recv(4096) == b"READY=1"
    assert notifier.ready(status="12.5 fps, gallery 40 faces")
    assert sock.recv(4096) == b"READY=1\nSTATUS=12.5 fps, gallery 40 faces"
    assert notifier.status("camera lost\nretrying")  # a newline would start a new field: flattened
    assert sock.recv(4096) == b"STATUS=camera lost retrying"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    assert notifier.extend_timeout(2.5)
    assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=2500000"
    assert (notifier.sent, notifier.failures) == (6, 0)


def test_reloading_carries_monotonic_usec(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = Notifier(path)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    match = re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=(\d+)", sock.recv(4096))
    assert match is not None
    assert before <= int(match.group(1)) <= after


def test_abstract_socket() -> None:
    name = f"face-agent-test-{uuid.uuid4().hex}"
    sock = _receiver("\0" + name)
    try:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


def test_unset_socket_is_a_logged_no_op(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="agent.systemd"):
        notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert "NOTIFY_SOCKET not set" in caplog.text
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert (notifier.sent, notifier.failures) == (0, 0)


def test_send_failure_is_counted_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "gone")
    sock = _receiver(path)
    sock.close()  # the file stays, nobody listens: ECONNREFUSED
    notifier = Notifier(path)
    with caplog.at_level(logging.WARNING, logger="agent.systemd"):
        assert notifier.watchdog() is False
        assert notifier.watchdog() is False
        assert Notifier(str(tmp_path / "never-existed")).ready() is False
    assert notifier.failures == 2
    assert notifier.sent == 0
    # logged once per notifier on the transition to failing, not per message
    assert caplog.text.count("send to NOTIFY_SOCKET failed") == 2
    sock = _receiver(path + "2")
    try:
        os.replace(path + "2", path)  # a listener appears at the same path: sending recovers
        with caplog.at_level(logging.INFO, logger="agent.systemd"):
            assert notifier.watchdog() is True
        assert sock.recv(4096) == b"WATCHDOG=1"
        assert "sending works again" in caplog.text
    finally:
        sock.close()


@pytest.mark.parametrize("raw", ["relative/path", "vsock:2:1234", "/" + "x" * 120])
def test_unusable_notify_socket_fails_at_start(raw: str) -> None:
    with pytest.raises(ConfigError):
        Notifier.from_env({"NOTIFY_SOCKET": raw})


def test_notify_rejects_malformed_fields() -> None:
    with pytest.raises(ValueError):
        Notifier(None).notify("READY=1\nSTATUS=x")
    with pytest.raises(ValueError):
        Notifier(None).notify("READY")


def test_watchdog_interval_from_environment() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}) == 0.5
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"}, pid=4242) is None
    for bad in (
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "5", "WATCHDOG_PID": "x"},
    ):
        with pytest.raises(ConfigError):
            watchdog_interval(bad)


def test_heartbeat_registry() -> None:
    assert HeartbeatRegistry().clock is time.monotonic  # what the agent uses
    # Here the test's clock: on the wall clock a loaded machine could let the 0.05 s max age pass between
    # register() and the check that finds it fresh. (tests/test_serve_watchdog.py runs on the real clock.)
    now = [100.0]
    registry = HeartbeatRegistry(max_entries=2, clock=lambda: now[0])
    camera = registry.register("camera/front", max_age_s=0.05)
    registry.register("inference", max_age_s=60)
    assert registry.stale() == []
    with pytest.raises(ValueError, match="already registered"):
        registry.register("camera/front", max_age_s=1)
    with pytest.raises(ValueError, match="more than 2"):
        registry.register("publish", max_age_s=1)
    with pytest.raises(ValueError):
        HeartbeatRegistry().register("x", max_age_s=0)
    now[0] += 0.08  # no beat for 0.08 s
    stale = registry.stale()
    assert [s.name for s in stale] == ["camera/front"]
    assert stale[0].age_s > 0.05
    camera.beat()
    assert registry.stale() == []
    camera.close()
    assert set(registry.ages()) == {"inference"}


def test_watchdog_pinger_follows_heartbeats(
    notify_socket: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    sock, path = notify_socket
    # The heartbeats run on the test's clock, so the camera is fresh or hung when the test says so. On the
    # wall clock, with a thread beating every 20 ms, a loaded machine starving that thread for 0.3 s would
    # hang it for real (a second "withholding" line), and a beat delayed past the "hang" would revive it.
    now = [100.0]
    registry = HeartbeatRegistry(clock=lambda: now[0])
    camera = registry.register("camera/front", max_age_s=0.3)
    registry.register("inference", max_age_s=60)
    pinger = WatchdogPinger(Notifier(path), registry, interval_s=0.2)
    assert pinger.period_s == pytest.approx(0.1)
    sock.settimeout(30.0)  # a bound for a hang, not a wait: each ping comes a period (0.1 s) after the last
    try:
        with caplog.at_level(logging.INFO, logger="agent.systemd"):
            pinger.start()
            assert [sock.recv(4096) for _ in range(3)] == [b"WATCHDOG=1"] * 3  # pings while fresh

            now[0] += 0.31  # the camera thread hangs: no beat for longer than its max age
            deadline = time.monotonic() + 30
            while pinger.withheld == 0:
                assert time.monotonic() < deadline, "the pinger never noticed the stale heartbeat"
                time.sleep(0.02)  # polling interval, not synchronisation
            _drain(sock)  # pings sent before the pinger noticed
            # Five periods without a single ping, counted in the pinger's own ticks rather than a 0.5 s window
            # that a loaded machine might fill with fewer ticks. A ping is in the socket by the time its tick
            # ends, so whatever was sent during these ticks is there to be drained.
            pings, ticks = pinger.pings, pinger.withheld
            deadline = time.monotonic() + 30
            while pinger.withheld < ticks + 5:
                assert time.monotonic() < deadline, "the pinger stopped ticking"
                time.sleep(0.02)  # polling interval, not synchronisation
            assert pinger.pings == pings and _drain(sock) == []
            withheld = [r for r in caplog.records if "withholding" in r.getMessage()]
            assert len(withheld) == 1  # logged once, not every tick
            assert withheld[0].levelno == logging.ERROR
            assert "camera/front" in withheld[0].getMessage()
            assert "inference" not in withheld[0].getMessage()

            camera.beat()  # the camera thread recovers
            sock.settimeout(30.0)  # _drain() set it back to 2 s
            assert sock.recv(4096) == b"WATCHDOG=1"
            assert any("resuming" in r.getMessage() for r in caplog.records)
    finally:
        assert pinger.stop(timeout_s=2.0)
    # A window for something that must not happen: the thread has ended (stop() returned True), so a loaded
    # machine can only lengthen the window, never produce a ping in it.
    pings = pinger.pings
    time.sleep(0.25)
    assert pinger.pings == pings  # stopped means stopped


def test_status_reporter_sends_changes(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    texts = iter(["front 12.0 fps; gallery 40 faces", "front 12.0 fps; gallery 40 faces", "boom"])

    def text() -> str:
        value = next(texts, "front 11.5 fps; gallery 41 faces")
        if value == "boom":
            raise RuntimeError("camera stats unavailable")
        return value

    reporter = StatusReporter(Notifier(path), text, period_s=0.05)
    reporter.start()
    try:
        assert sock.recv(4096) == b"STATUS=front 12.0 fps; gallery 40 faces"
        assert sock.recv(4096) == b"STATUS=front 11.5 fps; gallery 41 faces"  # repeat and failure skipped
        sock.settimeout(0.3)
        with pytest.raises(socket.timeout):  # unchanged text is not resent
            sock.recv(4096)
    finally:
        assert reporter.stop()


def test_load_credential(tmp_path: Path) -> None:
    (tmp_path / "mqtt-password").write_text("s3cret\n")
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert load_credential("mqtt-password", env) == "s3cret"
    assert load_credential("api-token", env, required=False) is None
    with pytest.raises(ConfigError, match="not found"):
        load_credential("api-token", env)
    with pytest.raises(ConfigError, match="UTF-8"):
        load_credential("binary", env)
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY"):
        load_credential("mqtt-password", {})
    with pytest.raises(ValueError):
        load_credential("../etc/passwd", env)


# --- the unit file -------------------------------------------------------------------------------------


def _unit_keys(text: str) -> list[str]:
    return [line.split("=", 1)[0] for line in text.splitlines() if re.match(r"^[A-Za-z]+=", line)]


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing: apt-get install systemd"
    return tool


def _unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at a real executable, since /opt/face-agent does not exist here."""
    text = UNIT.read_text()
    assert EXEC_START in text.splitlines()
    exe = tmp_path / "face-agent"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    copy = tmp_path / "face-agent.service"
    copy.write_text(text.replace("ExecStart=/opt/face-agent/venv/bin/face-agent", f"ExecStart={exe}"))
    return copy


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    copy = _unit_copy(tmp_path)
    result = subprocess.run(
        [_systemd_analyze(), "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).strip() == ""


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """Guards the test above: verify must complain about a typo, or an empty output would prove nothing."""
    copy = _unit_copy(tmp_path)
    copy.write_text(copy.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    result = subprocess.run(
        [_systemd_analyze(), "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert "NoNewPrivilege" in result.stdout + result.stderr


def test_unit_sandbox_exposure_is_low(tmp_path: Path) -> None:
    result = subprocess.run(
        [_systemd_analyze(), "security", "--offline=yes", "--no-pager", str(_unit_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0


def test_unit_contract_and_readme_explains_every_key() -> None:
    text = UNIT.read_text()
    lines = set(text.splitlines())
    for required in (
        "Type=notify",
        "NotifyAccess=main",
        EXEC_START,
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "User=face-agent",
        "UMask=0077",
        "StateDirectoryMode=0700",
        "LoadCredential=mqtt-password:/etc/face-agent/credentials/mqtt-password",
        "ProtectSystem=strict",
        "DevicePolicy=closed",
        "DeviceAllow=char-video4linux rw",
    ):
        assert required in lines, required
    assert any(line.startswith("WatchdogSec=") for line in lines)
    assert any(line.startswith("StartLimitBurst=") for line in lines)
    assert "video" in next(line for line in lines if line.startswith("SupplementaryGroups="))
    readme = (ROOT / "systemd" / "README.md").read_text()
    missing = sorted({key for key in _unit_keys(text) if f"`{key}=" not in readme})
    assert missing == [], f"systemd/README.md does not explain {missing}"


def test_sysusers_config_creates_the_units_account(tmp_path: Path) -> None:
    """systemd-sysusers itself applies systemd/face-agent.sysusers to an empty root: the account it makes is
    the one the unit runs as (User=, SupplementaryGroups=, home = StateDirectory=)."""
    tool = shutil.which("systemd-sysusers")
    assert tool, "systemd-sysusers missing (scripts/test.sh installs systemd)"
    (tmp_path / "etc").mkdir()
    conf = (ROOT / "systemd" / "face-agent.sysusers").read_text()
    out = subprocess.run(
        [tool, f"--root={tmp_path}", "-"], input=conf, capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 0, out.stderr
    unit = UNIT.read_text()
    user = re.search(r"^User=(\S+)$", unit, re.M).group(1)
    groups = re.search(r"^SupplementaryGroups=(.+)$", unit, re.M).group(1).split()
    state = re.search(r"^StateDirectory=(\S+)$", unit, re.M).group(1)
    passwd = {f[0]: f for f in (ln.split(":") for ln in (tmp_path / "etc/passwd").read_text().splitlines())}
    name, _, uid, gid, _, home, shell = passwd[user]
    assert 0 < int(uid) < 1000 and home == f"/var/lib/{state}" and shell == "/usr/sbin/nologin"
    group = {f[0]: f for f in (ln.split(":") for ln in (tmp_path / "etc/group").read_text().splitlines())}
    assert group[user][2] == gid  # its own group is its primary group
    for g in groups:
        assert user in group[g][3].split(","), f"{user} not in group {g}"
