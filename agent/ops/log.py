"""Logging setup: syslog-priority-prefixed lines for the journal, readable lines elsewhere.

Under systemd, stderr is a stream to journald, which parses a leading `<N>` on every line as the syslog
priority (SyslogLevelPrefix= is on by default) and adds the timestamp and unit itself. systemd sets
JOURNAL_STREAM=<device>:<inode> of that stream; we only use the journal format when stderr really is it,
so a child whose stderr was redirected elsewhere does not print `<6>` into a file.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Literal, TextIO

from pydantic import BaseModel, ConfigDict, Field, field_validator

_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}
_MARK = "_face_agent_handler"  # attribute on handlers we installed, so setup can be repeated (reload)


class LogConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Lowest level written. DEBUG includes per-request lines of the health endpoint."
    )
    format: Literal["auto", "journal", "text"] = Field(
        "auto", description="auto: journal format when stderr is connected to journald, text otherwise."
    )

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


def syslog_priority(levelno: int) -> int:
    """Syslog priority of a logging level; a custom in-between level maps like the standard one below it."""
    for level in sorted(_PRIORITY, reverse=True):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


class JournalFormatter(logging.Formatter):
    """`<N>logger: message`, every line prefixed so a traceback keeps its priority in the journal."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines() or [""])


def stream_is_journal(environ: Mapping[str, str], stream: TextIO) -> bool:
    """True when JOURNAL_STREAM names the very file `stream` writes to."""
    raw = environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = raw.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (pytest capture, StringIO)
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def setup_logging(
    config: LogConfig,
    environ: Mapping[str, str],
    *,
    stream: TextIO | None = None,
    logger_name: str = "",
) -> logging.Handler:
    """Install one handler on `logger_name` (root by default), replacing one installed earlier."""
    stream = stream if stream is not None else sys.stderr
    use_journal = config.format == "journal" or (
        config.format == "auto" and stream_is_journal(environ, stream)
    )
    handler = logging.StreamHandler(stream)
    if use_journal:
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-8s %(name)s: %(message)s"))
    setattr(handler, _MARK, True)
    logger = logging.getLogger(logger_name)
    for old in [h for h in logger.handlers if getattr(h, _MARK, False)]:
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(config.level)
    return handler


class StateLog:
    """Logs a line only when a key's state changes: "camera/front: connected -> lost (timeout)".

    Made for per-frame code paths: call `change()` on every frame, the journal gets one line per transition.
    Keys are bounded (least recently changed evicted first, counted in `evicted`).
    """

    def __init__(self, logger: logging.Logger, *, max_keys: int = 1024) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self._log = logger
        self._max_keys = max_keys
        self._states: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0

    def change(self, key: str, state: str, msg: str = "", *, level: int = logging.INFO) -> bool:
        """Record `state` for `key`; log and return True only if it differs from the previous one."""
        with self._lock:
            previous = self._states.get(key)
            if previous == state:
                return False
            self._states[key] = state
            self._states.move_to_end(key)
            if len(self._states) > self._max_keys:
                self._states.popitem(last=False)
                self.evicted += 1
        detail = f" ({msg})" if msg else ""
        self._log.log(level, "%s: %s -> %s%s", key, previous or "start", state, detail)
        return True

    def state(self, key: str) -> str | None:
        with self._lock:
            return self._states.get(key)

    def forget(self, key: str) -> None:
        with self._lock:
            self._states.pop(key, None)


class RateLimitedLog:
    """Logs a recurring problem at most once per `interval_s`: the first time at once, later ones with the
    count of repeats since the last line ("... (12 more in 60 s)"). For retry loops that fail every second.

    `clear()` after a success, so the next failure is logged at once again."""

    def __init__(
        self, logger: logging.Logger, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self._log = logger
        self._interval = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: float | None = None
        self._suppressed = 0

    def log(self, level: int, msg: str) -> bool:
        """Log `msg` unless a line went out less than `interval_s` ago; True when it was logged."""
        now = self._clock()
        with self._lock:
            if self._last is not None and now - self._last < self._interval:
                self._suppressed += 1
                return False
            repeats, self._suppressed, self._last = self._suppressed, 0, now
        suffix = f" ({repeats} more in the last {self._interval:.0f} s)" if repeats else ""
        self._log.log(level, "%s%s", msg, suffix)
        return True

    def clear(self) -> int:
        """Forget the last line; returns how many repeats went unlogged since it."""
        with self._lock:
            repeats, self._suppressed, self._last = self._suppressed, 0, None
        return repeats
