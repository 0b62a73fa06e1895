"""systemd integration written in-project: sd_notify datagrams, the watchdog, heartbeats and credentials.

The notify protocol is one AF_UNIX datagram of newline-separated KEY=VALUE lines sent to $NOTIFY_SOCKET.
A leading '@' in the address means a Linux abstract socket (the '@' becomes a NUL byte). Sending must never
take the agent down: a failed send is counted and logged on the transition, then the caller carries on.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.errors import ConfigError

_SUN_PATH_MAX = 108  # sizeof(sockaddr_un.sun_path) on Linux, including the terminating NUL for paths
_MAX_CREDENTIAL_BYTES = 64 * 1024


def _parse_notify_address(raw: str) -> str:
    """Turn $NOTIFY_SOCKET into a sendto() address, or raise ConfigError with the reason."""
    if raw.startswith("@"):
        address = "\0" + raw[1:]
        limit = _SUN_PATH_MAX
    elif raw.startswith("/"):
        address = raw
        limit = _SUN_PATH_MAX - 1
    else:
        # systemd >= 254 may also pass vsock:CID:PORT, used only inside VMs; edge devices never see it.
        raise ConfigError(f"NOTIFY_SOCKET={raw!r} is neither an absolute path nor an '@' abstract socket")
    if len(address.encode()) > limit:
        raise ConfigError(f"NOTIFY_SOCKET={raw!r} is longer than an AF_UNIX address can be")
    return address


class Notifier:
    """Sends sd_notify messages. Disabled (every call a no-op returning False) when no socket is given."""

    def __init__(self, address: str | None, *, timeout_s: float = 1.0, logger: logging.Logger | None = None):
        self._log = logger or logging.getLogger("agent.systemd")
        self._address = _parse_notify_address(address) if address else None
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self.sent = 0
        self.failures = 0
        self._failing = False
        if self._address is None:
            self._log.debug("NOTIFY_SOCKET not set: sd_notify messages are not sent (not started by systemd)")

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str], *, timeout_s: float = 1.0, logger: logging.Logger | None = None
    ) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET") or None, timeout_s=timeout_s, logger=logger)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *fields: str) -> bool:
        """Send KEY=VALUE fields as one datagram. True if sent; False if disabled or the send failed."""
        for field in fields:
            if "=" not in field or "\n" in field:
                raise ValueError(f"sd_notify field must be one KEY=VALUE line, got {field!r}")
        if self._address is None:
            return False
        payload = "\n".join(fields).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(self._timeout_s)
                sock.sendto(payload, self._address)
        except OSError as exc:
            self._record(ok=False, error=exc)
            return False
        self._record(ok=True, error=None)
        return True

    def _record(self, *, ok: bool, error: OSError | None) -> None:
        # Log only when the outcome changes, so a dead socket does not flood the journal every watchdog tick.
        with self._lock:
            if ok:
                self.sent += 1
                recovered, self._failing = self._failing, False
            else:
                self.failures += 1
                first, self._failing = not self._failing, True
        if ok and recovered:
            self._log.info("sd_notify: sending works again")
        elif not ok and first:
            self._log.warning(
                "sd_notify: send to NOTIFY_SOCKET failed: %s (counting further failures)", error
            )

    def ready(self, status: str | None = None) -> bool:
        """READY=1: start-up or reload finished. Send only once models are warm and the gallery is loaded."""
        return self.notify("READY=1", *([_status_field(status)] if status is not None else []))

    def status(self, text: str) -> bool:
        return self.notify(_status_field(text))

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        # systemd >= 253 requires MONOTONIC_USEC with RELOADING=1 to tell reloads apart; older ones ignore it.
        # Python's monotonic clock is CLOCK_MONOTONIC on Linux, the clock systemd compares against.
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more start/stop time, e.g. while a slow device compiles its models."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(1, round(seconds * 1_000_000))}")


def _status_field(text: str) -> str:
    return "STATUS=" + " ".join(text.split("\n")).strip()


def watchdog_interval(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """The watchdog interval in seconds systemd expects pings within, or None when it is not enabled for us.

    A malformed value raises ConfigError: ignoring it would get the service killed later, silently.
    """
    raw_usec = environ.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    raw_pid = environ.get("WATCHDOG_PID")
    if raw_pid:
        if not raw_pid.isdigit():
            raise ConfigError(f"WATCHDOG_PID={raw_pid!r} is not a process id")
        if int(raw_pid) != (os.getpid() if pid is None else pid):
            return None  # the watchdog is meant for another process (we were started by it)
    if not raw_usec.isdigit() or int(raw_usec) <= 0:
        raise ConfigError(f"WATCHDOG_USEC={raw_usec!r} is not a positive number of microseconds")
    return int(raw_usec) / 1_000_000


def load_credential(name: str, environ: Mapping[str, str], *, required: bool = True) -> str | None:
    """Read a LoadCredential= secret from $CREDENTIALS_DIRECTORY; one trailing newline is dropped."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"invalid credential name {name!r}")
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        if required:
            raise ConfigError(f"credential {name!r} needed but CREDENTIALS_DIRECTORY is not set")
        return None
    path = Path(directory) / name
    try:
        with path.open("rb") as fh:
            data = fh.read(_MAX_CREDENTIAL_BYTES + 1)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"credential {name!r} not found in {directory}") from None
        return None
    except OSError as exc:
        raise ConfigError(f"credential {name!r} cannot be read: {exc}") from exc
    if len(data) > _MAX_CREDENTIAL_BYTES:
        raise ConfigError(f"credential {name!r} is larger than {_MAX_CREDENTIAL_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"credential {name!r} is not UTF-8 text") from None
    return text[:-1] if text.endswith("\n") else text


@dataclass(frozen=True)
class StaleHeartbeat:
    name: str
    age_s: float
    max_age_s: float

    def describe(self) -> str:
        return f"{self.name} (last beat {self.age_s:.1f} s ago, limit {self.max_age_s:.1f} s)"


class Heartbeat:
    """One thread's heartbeat. `beat()` is a single attribute store: cheap enough for every frame."""

    def __init__(self, registry: HeartbeatRegistry, name: str, max_age_s: float, now: float) -> None:
        self._registry = registry
        self.name = name
        self.max_age_s = max_age_s
        self.last = now

    def beat(self) -> None:
        self.last = self._registry.clock()

    def close(self) -> None:
        """Unregister, e.g. when the thread ends on purpose (a camera removed by a reload)."""
        self._registry.unregister(self.name)

    def __enter__(self) -> Heartbeat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HeartbeatRegistry:
    """Named heartbeats of the camera, inference and publish threads; one owner (the app) creates it."""

    def __init__(self, *, max_entries: int = 64, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._max_entries = max_entries
        self._beats: dict[str, Heartbeat] = {}
        self._lock = threading.Lock()

    def register(self, name: str, max_age_s: float) -> Heartbeat:
        """Register a heartbeat that counts as fresh from now on; names are unique."""
        if not name:
            raise ValueError("heartbeat name must not be empty")
        if not max_age_s > 0:
            raise ValueError(f"heartbeat {name!r}: max_age_s must be > 0, got {max_age_s}")
        with self._lock:
            if name in self._beats:
                raise ValueError(f"heartbeat {name!r} is already registered")
            if len(self._beats) >= self._max_entries:
                raise ValueError(f"more than {self._max_entries} heartbeats registered")
            beat = Heartbeat(self, name, max_age_s, self.clock())
            self._beats[name] = beat
        return beat

    def unregister(self, name: str) -> None:
        with self._lock:
            self._beats.pop(name, None)

    def _snapshot(self) -> list[Heartbeat]:
        with self._lock:
            return list(self._beats.values())

    def ages(self) -> dict[str, float]:
        now = self.clock()
        return {b.name: now - b.last for b in self._snapshot()}

    def stale(self) -> list[StaleHeartbeat]:
        now = self.clock()
        return [
            StaleHeartbeat(b.name, now - b.last, b.max_age_s)
            for b in self._snapshot()
            if now - b.last > b.max_age_s
        ]


class WatchdogPinger:
    """Sends WATCHDOG=1 every half interval, but only while every registered heartbeat is fresh.

    A hung camera or inference thread thus stops the pings and systemd restarts the service, instead of a
    process that is alive but does nothing. With no heartbeat registered, pings are sent unconditionally.
    """

    def __init__(
        self,
        notifier: Notifier,
        heartbeats: HeartbeatRegistry,
        interval_s: float,
        *,
        logger: logging.Logger | None = None,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"watchdog interval must be > 0, got {interval_s}")
        self._notifier = notifier
        self._heartbeats = heartbeats
        self.period_s = interval_s / 2
        self._log = logger or logging.getLogger("agent.systemd")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._withholding = False
        self.pings = 0
        self.withheld = 0

    def tick(self) -> bool:
        """One check; pings when all heartbeats are fresh. Returns whether WATCHDOG=1 was sent."""
        stale = self._heartbeats.stale()
        if stale:
            self.withheld += 1
            if not self._withholding:
                self._withholding = True
                names = ", ".join(s.describe() for s in stale)
                self._log.error("watchdog: withholding WATCHDOG=1, stale heartbeat: %s", names)
            return False
        if self._withholding:
            self._withholding = False
            self._log.warning("watchdog: all heartbeats fresh again, resuming WATCHDOG=1")
        self.pings += 1
        return self._notifier.watchdog()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.tick()
                self._stop.wait(self.period_s)
        except Exception:  # a bug here must be visible; systemd will restart us once pings stop
            self._log.exception("watchdog pinger crashed; WATCHDOG=1 is no longer sent")

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("watchdog pinger already started")
        self._thread = threading.Thread(target=self._run, name="watchdog-pinger", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> bool:
        """Stop pinging; True when the thread ended within the timeout."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()


class StatusReporter:
    """Sends STATUS=<text()> every `period_s` (fps, gallery size) so `systemctl status` shows live numbers.

    Sends only when the text changed; a failing text() is logged once and retried next period.
    """

    def __init__(
        self,
        notifier: Notifier,
        text: Callable[[], str],
        *,
        period_s: float = 5.0,
        logger: logging.Logger | None = None,
    ) -> None:
        if not period_s > 0:
            raise ValueError(f"status period must be > 0, got {period_s}")
        self._notifier = notifier
        self._text = text
        self.period_s = period_s
        self._log = logger or logging.getLogger("agent.systemd")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: str | None = None
        self._failing = False

    def tick(self) -> bool:
        """Send the current status if it changed; returns whether a datagram was sent."""
        try:
            text = self._text()
        except Exception as exc:  # a status line must never take the service down
            if not self._failing:
                self._log.warning("status text failed: %s", exc)
            self._failing = True
            return False
        self._failing = False
        if text == self._last:
            return False
        self._last = text
        return self._notifier.status(text)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.period_s)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("status reporter already started")
        self._thread = threading.Thread(target=self._run, name="sd-status", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> bool:
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()
