"""Between recognition and the sink: the bounded event queue with its dispatcher thread, and the latency log.

Events and kiosk challenge messages share one queue and one thread, so a slow sink (fsync of the MQTT outbox)
never stalls recognition and a camera's messages leave in the order they were decided; an item that finds the
queue full is dropped and counted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from agent.errors import AgentError
from agent.publish.challenge import ChallengeMessage
from agent.publish.payloads import RecognitionEvent
from agent.publish.sink import EventSink

log = logging.getLogger(__name__)


class LatencyLog:
    """Recent latencies per stage in seconds (bounded), for stats and benchmarks; also feeds metrics."""

    def __init__(self, observe: Callable[[str, float], None] | None = None, keep: int = 20_000) -> None:
        self._observe = observe
        self._keep = keep
        self._lock = threading.Lock()
        self._data: dict[str, deque[float]] = {}

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._data.setdefault(stage, deque(maxlen=self._keep)).append(seconds)
        if self._observe is not None:
            self._observe(stage, seconds)

    def summary(self) -> dict[str, dict[str, float]]:
        with self._lock:
            data = {k: np.asarray(v) for k, v in self._data.items() if v}
        return {
            k: {
                "n": int(v.size),
                "p50_ms": float(np.percentile(v, 50) * 1e3),
                "p99_ms": float(np.percentile(v, 99) * 1e3),
            }
            for k, v in data.items()
        }


class EventDispatcher:
    """One thread handing events to the sink in order, behind a bounded queue."""

    def __init__(self, sink: EventSink, size: int, latency: LatencyLog, beat: Callable[[], None]) -> None:
        self._sink = sink
        self._queue: queue.Queue[tuple[RecognitionEvent | ChallengeMessage, bytes | None, float] | None] = (
            queue.Queue(size)
        )
        self._latency = latency
        self._beat = beat
        self.dropped = 0
        self.failed = 0
        self.published = 0
        self._thread = threading.Thread(target=self._run, name="event-dispatch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(
        self, event: RecognitionEvent | ChallengeMessage, snapshot: bytes | None, captured_mono: float
    ) -> bool:
        try:
            self._queue.put_nowait((event, snapshot, captured_mono))
            return True
        except queue.Full:
            self.dropped += 1
            what = event.event_id if isinstance(event, RecognitionEvent) else event.challenge_id
            log.warning("event queue full: dropped %s (camera %s)", what, event.camera_id)
            return False

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while True:
            self._beat()
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is None:
                return
            event, snapshot, captured_mono = item
            t0 = time.monotonic()
            try:
                if isinstance(event, ChallengeMessage):
                    self._sink.publish_challenge(event)
                else:
                    self._sink.publish_event(event, snapshot)
                self.published += 1
            except AgentError as exc:  # e.g. the event file cannot be written: counted, the loop goes on
                self.failed += 1
                log.error("publishing on camera %s failed: %s", event.camera_id, exc)
            now = time.monotonic()
            self._latency.add("publish", now - t0)
            self._latency.add("capture_to_publish", now - captured_mono)

    def stop(self, timeout: float) -> bool:
        """Publish what is queued (bounded by `timeout`), then end the thread."""
        deadline = time.monotonic() + timeout
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=0.1)
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    return False
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()
