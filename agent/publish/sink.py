"""Sinks for when no broker is configured: the same messages as MQTT, one JSON object per line,
`{"topic": ..., "payload": {...}}`, on stdout or in a size-bounded file. Snapshots are not written
(`has_snapshot` is false); status and HA discovery have no meaning without a broker and are skipped.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TextIO

from agent.errors import ConfigError, TransientError
from agent.publish.challenge import ChallengeMessage, challenge_messages
from agent.publish.config import PublishConfig
from agent.publish.outbox import OutMessage
from agent.publish.payloads import (
    RecognitionEvent,
    encode,
    event_messages,
    gallery_payload,
    stamp,
    stats_payload,
)
from agent.publish.topics import Topics


class EventSink(Protocol):
    """What the pipeline and the app see, whether a broker is configured or not."""

    def start(self) -> None: ...

    def publish_event(self, event: RecognitionEvent, snapshot: bytes | None = None) -> None: ...

    def publish_challenge(self, message: ChallengeMessage) -> None: ...

    def publish_gallery_version(
        self, version: str, *, persons: int | None = None, faces: int | None = None
    ) -> None: ...

    def publish_stats(self, extra: Mapping[str, Any] | None = None) -> bool: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self, timeout: float = 5.0) -> None: ...


class _LineSink:
    def __init__(self, cfg: PublishConfig, clock: Callable[[], float]) -> None:
        self._cfg = cfg
        self._clock = clock
        self._topics = Topics(cfg.topic_prefix, cfg.resolved_device_id(), cfg.home_assistant.discovery_prefix)
        self._lock = threading.Lock()
        self._seq = 0
        self._lines = 0

    @property
    def topics(self) -> Topics:
        return self._topics

    def start(self) -> None:
        """Nothing to connect; present so the app treats every sink alike."""

    def publish_event(self, event: RecognitionEvent, snapshot: bytes | None = None) -> None:
        messages, _ = event_messages(event, self._topics, self._cfg, None)
        self._emit_all(messages)

    def publish_challenge(self, message: ChallengeMessage) -> None:
        self._emit_all(challenge_messages(message, self._topics))

    def _emit_all(self, messages: list[OutMessage]) -> None:
        with self._lock:
            for msg in messages:
                self._seq += 1
                body = stamp(msg.payload, self._seq, self._clock()) if msg.stamp else msg.payload
                self._emit(msg.topic, body)

    def publish_gallery_version(
        self, version: str, *, persons: int | None = None, faces: int | None = None
    ) -> None:
        body = gallery_payload(
            self._topics.device_id, str(version), persons=persons, faces=faces, now=self._clock()
        )
        with self._lock:
            self._emit(self._topics.gallery, encode(body))

    def publish_stats(self, extra: Mapping[str, Any] | None = None) -> bool:
        body = stats_payload(
            self._topics.device_id,
            {**self.stats(), **({"agent": dict(extra)} if extra else {})},
            self._clock(),
        )
        with self._lock:
            self._emit(self._topics.stats, encode(body))
        return True

    def stats(self) -> dict[str, Any]:
        return {"connected": False, "counters": {"lines_written": self._lines}}

    def close(self, timeout: float = 5.0) -> None:
        """Nothing is buffered beyond a flushed line; subclasses release their file."""

    def _emit(self, topic: str, payload: bytes) -> None:
        line = json.dumps(
            {"topic": topic, "payload": json.loads(payload)}, ensure_ascii=False, separators=(",", ":")
        )
        self._write(line + "\n")
        self._lines += 1

    def _write(self, line: str) -> None:
        raise NotImplementedError


class StdoutSink(_LineSink):
    """JSON lines on stdout (journald keeps them when run under systemd)."""

    def __init__(
        self, cfg: PublishConfig, stream: TextIO | None = None, *, clock: Callable[[], float] = time.time
    ):
        super().__init__(cfg, clock)
        self._stream = stream

    def _write(self, line: str) -> None:
        stream = self._stream if self._stream is not None else sys.stdout  # resolved late: tests swap stdout
        stream.write(line)
        stream.flush()


class JsonlFileSink(_LineSink):
    """JSON lines appended to `cfg.jsonl_path`, rotated to '<name>.1' beyond `cfg.jsonl_max_bytes`."""

    def __init__(self, cfg: PublishConfig, *, clock: Callable[[], float] = time.time) -> None:
        if cfg.jsonl_path is None:
            raise ConfigError("JsonlFileSink needs publish.jsonl_path")
        super().__init__(cfg, clock)
        self._path: Path = cfg.jsonl_path
        self._file = self._open()

    def _open(self) -> TextIO:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            return self._path.open("a", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot open the event file {self._path}: {exc}") from exc

    def _write(self, line: str) -> None:
        try:
            if self._file.tell() + len(line.encode()) > self._cfg.jsonl_max_bytes and self._file.tell() > 0:
                self._file.close()
                self._path.replace(self._path.with_name(self._path.name + ".1"))
                self._file = self._open()
            self._file.write(line)
            self._file.flush()
        except OSError as exc:
            raise TransientError(
                f"cannot write the event file {self._path}: {exc}", code="sink_write_failed"
            ) from exc

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._file.close()
