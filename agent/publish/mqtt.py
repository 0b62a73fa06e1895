"""MQTT publisher over paho-mqtt 2.x: events go through the SQLite outbox and leave it in order.

Threads: paho's network thread (loop_start: connect, reconnect with capped exponential backoff, keepalive)
and one sender thread that owns the in-flight map. The pipeline only writes the outbox, so it never waits on
the network. A row is deleted only when its PUBACK arrives; paho re-sends un-acknowledged messages (DUP) after
a reconnect, and after a restart the sender starts again from the oldest row, which is what QoS 1 allows.

Lock order matters: paho calls on_publish while holding its own message lock, and `publish()` takes that lock,
so callbacks never take a lock the sender holds around `publish()`; they only append to a deque and set an
Event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from agent.errors import ConfigError
from agent.ops.log import RateLimitedLog
from agent.publish.challenge import ChallengeMessage, challenge_messages
from agent.publish.config import MqttConfig, PublishConfig, read_password
from agent.publish.outbox import DROP_INVALID, Outbox, OutboxRow
from agent.publish.payloads import (
    RecognitionEvent,
    encode,
    event_messages,
    gallery_payload,
    ha_discovery,
    stamp,
    stats_payload,
)
from agent.publish.topics import Topics, check_level

log = logging.getLogger(__name__)

QOS = 1
_TICK_S = 0.5  # sender wake-up without news: prune / stats timers; acks and new rows wake it at once
_PRUNE_EVERY_S = 10.0
_EXTRA_QUEUE = 64  # room in paho's queue for status, gallery, discovery and stats beside the event window
_PROBLEM_LOG_EVERY_S = 60.0  # paho retries every few seconds; the journal gets one line a minute
# CONNACK codes that no retry can fix (MQTT 5 numbering, which paho also uses for 3.1.1 brokers).
_REFUSED_LOGIN = {134: "bad user name or password", 135: "not authorized"}


class MqttPublisher:
    """Publishes recognition events, status, gallery version and stats for one agent."""

    def __init__(
        self,
        cfg: PublishConfig,
        cameras: Sequence[str] = (),
        *,
        stats_provider: Callable[[], Mapping[str, Any]] | None = None,
        sw_version: str = "0",
        clock: Callable[[], float] = time.time,
        heartbeat: Callable[[], None] | None = None,
    ) -> None:
        if cfg.mqtt is None:
            raise ConfigError("MqttPublisher needs publish.mqtt; use a sink when no broker is configured")
        self._cfg = cfg
        self._mqtt: MqttConfig = cfg.mqtt
        self._cameras = tuple(check_level(c, "camera id") for c in cameras)
        self._topics = Topics(cfg.topic_prefix, cfg.resolved_device_id(), cfg.home_assistant.discovery_prefix)
        self._stats_provider = stats_provider
        self._sw_version = sw_version
        self._clock = clock
        self._heartbeat = heartbeat or (lambda: None)  # the sender loop beats every tick, connected or not
        self._started_at = time.monotonic()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._acks: deque[int] = deque()  # mids from on_publish; bounded by paho's queue limit
        self._lock = threading.Lock()  # guards the counters and _gallery only, never held around paho
        self._counters: dict[str, int] = {}
        self._last_error: str | None = None
        self._gallery: bytes | None = None
        self._inflight_count = 0
        self._problems = RateLimitedLog(log, _PROBLEM_LOG_EVERY_S)
        self._failed_attempts = 0  # since the last successful connect (paho's network thread only)
        self._client = self._make_client(read_password(self._mqtt))  # config errors before opening files
        self._outbox = Outbox(cfg.outbox, clock=clock)
        self._sender = threading.Thread(target=self._run, name="mqtt-sender", daemon=True)
        self._started = False
        self.left_in_outbox: int | None = None  # set by close()

    @property
    def topics(self) -> Topics:
        return self._topics

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # -- lifecycle -------------------------------------------------------------------------------------

    def _make_client(self, password: str | None) -> paho.Client:
        m = self._mqtt
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=m.client_id or f"face-agent-{self._topics.device_id}",
            clean_session=True,
            protocol=paho.MQTTv311,
            reconnect_on_failure=True,
        )
        if m.username is not None:
            client.username_pw_set(m.username, password)
        if m.tls:
            try:
                client.tls_set(
                    ca_certs=str(m.ca_file) if m.ca_file else None,
                    certfile=str(m.cert_file) if m.cert_file else None,
                    keyfile=str(m.key_file) if m.key_file else None,
                )
            except (OSError, ValueError) as exc:
                raise ConfigError(f"MQTT TLS setup failed: {exc}") from exc
        client.will_set(self._topics.status, "offline", qos=QOS, retain=True)
        client.reconnect_delay_set(m.reconnect_min_s, m.reconnect_max_s)
        client.max_inflight_messages_set(m.inflight_window + _EXTRA_QUEUE)
        client.max_queued_messages_set(m.inflight_window + _EXTRA_QUEUE + 2 * len(self._cameras))
        client.connect_timeout = m.connect_timeout_s
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_publish = self._on_publish
        return client

    def start(self) -> None:
        """Begin connecting in the background; events can be published before the broker is reached."""
        if self._started:
            return
        self._started = True
        self._client.connect_async(self._mqtt.host, self._mqtt.port, keepalive=self._mqtt.keepalive_s)
        self._client.loop_start()
        self._sender.start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def flush(self, timeout: float) -> bool:
        """Wait until every queued event is acknowledged; False when `timeout` runs out first."""
        deadline = time.monotonic() + timeout
        while self._outbox.depth() > 0:
            if time.monotonic() >= deadline:
                return False
            self._wake.set()
            time.sleep(0.02)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Drain what can be drained within `timeout`, mark the agent offline, disconnect. Rows not yet
        acknowledged stay in the outbox file and go out on the next start."""
        deadline = time.monotonic() + timeout
        if self._started:
            if self.connected:
                self.flush(max(0.0, deadline - time.monotonic()))
            self._stop.set()
            self._wake.set()
            self._sender.join(max(0.1, deadline - time.monotonic()))
            if self.connected:
                info = self._client.publish(self._topics.status, "offline", qos=QOS, retain=True)
                try:
                    info.wait_for_publish(max(0.1, deadline - time.monotonic()))
                except (RuntimeError, ValueError) as exc:
                    log.warning("could not publish 'offline' on close: %s", exc)
            self._client.disconnect()
            self._client.loop_stop()  # bounded: paho's loop wakes at least once a second
        self.left_in_outbox = self._outbox.depth()
        if self.left_in_outbox:
            log.warning(
                "%d event(s) not acknowledged by the broker stay in the outbox %s; sent at the next start",
                self.left_in_outbox,
                self._cfg.outbox.path,
            )
        else:
            log.info("outbox empty: every event was acknowledged by the broker")
        self._outbox.close()

    def __enter__(self) -> MqttPublisher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public publishing -----------------------------------------------------------------------------

    def publish_event(self, event: RecognitionEvent, snapshot: bytes | None = None) -> None:
        """Queue the event (and its snapshot / access decision) durably; returns once it is on disk."""
        messages, skipped = event_messages(event, self._topics, self._cfg, snapshot)
        self._outbox.put(messages)
        self._bump("events_queued")
        if skipped:
            self._bump("snapshots_skipped")
        self._wake.set()
        # Presence is live state for the HA binary sensor: useless when replayed late, so never queued.
        if self.connected:
            self._client.publish(self._topics.presence(event.camera_id), "ON", qos=0)

    def publish_challenge(self, message: ChallengeMessage) -> None:
        """Queue a kiosk challenge message durably, in order with the events (QoS 1, outbox)."""
        self._outbox.put(challenge_messages(message, self._topics))
        self._bump("challenges_queued")
        self._wake.set()

    def publish_gallery_version(
        self, version: str, *, persons: int | None = None, faces: int | None = None
    ) -> None:
        """Retained; remembered and re-published on every reconnect, so the latest always wins."""
        body = encode(
            gallery_payload(
                self._topics.device_id, str(version), persons=persons, faces=faces, now=self._clock()
            )
        )
        with self._lock:
            self._gallery = body
        if self.connected:
            self._client.publish(self._topics.gallery, body, qos=QOS, retain=True)

    def publish_stats(self, extra: Mapping[str, Any] | None = None) -> bool:
        """Publish the stats message now; False (and counted) when not connected: stale stats are useless."""
        if not self.connected:
            self._bump("stats_skipped")
            return False
        stats = self.stats()
        agent: dict[str, Any] = dict(self._stats_provider()) if self._stats_provider else {}
        agent.update(extra or {})
        if agent:
            stats["agent"] = agent
        # Retained: a dashboard (or an operator with mosquitto_sub) that connects later sees the last figures
        # at once, including the sync lag of an edge (agent.sync) that stopped reporting.
        info = self._client.publish(
            self._topics.stats,
            encode(stats_payload(self._topics.device_id, stats, self._clock())),
            qos=QOS,
            retain=True,
        )
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self._bump("stats_skipped")
            return False
        return True

    def stats(self) -> dict[str, Any]:
        """Counters of this process and the outbox (whose drop counts span restarts)."""
        with self._lock:
            counters = dict(self._counters)
            last_error = self._last_error
        oldest = self._outbox.oldest_age_s()
        return {
            "connected": self.connected,
            "uptime_s": round(time.monotonic() - self._started_at, 1),
            "last_error": last_error,
            "inflight": self._inflight_count,
            "counters": counters,
            "outbox": {
                "depth": self._outbox.depth(),
                "bytes": self._outbox.size_bytes(),
                "oldest_age_s": None if oldest is None else round(oldest, 1),
                "dropped": self._outbox.drops(),
            },
        }

    # -- paho callbacks (network thread) ---------------------------------------------------------------

    def _on_connect(self, client: paho.Client, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        where = f"{self._mqtt.host}:{self._mqtt.port}"
        if reason.is_failure:
            self._set_error(f"connect refused: {reason}")
            self._bump("connect_failures")
            self._failed_attempts += 1
            login = _REFUSED_LOGIN.get(getattr(reason, "value", None))
            if login is not None:  # a config mistake: retrying never helps, so it is an error every time
                self._problems.log(
                    logging.ERROR,
                    f"MQTT broker {where} refused the login ({login}): check publish.mqtt.username and the "
                    "password (password_file / password_credential); events stay in the outbox",
                )
            else:
                self._problems.log(logging.WARNING, f"MQTT broker {where} refused the connection: {reason}")
            return
        self._problems.clear()
        failed, self._failed_attempts = self._failed_attempts, 0
        log.info("MQTT connected to %s%s", where, f" after {failed} failed attempt(s)" if failed else "")
        self._bump("connects")
        client.publish(self._topics.status, "online", qos=QOS, retain=True)
        with self._lock:
            gallery = self._gallery
        if gallery is not None:
            client.publish(self._topics.gallery, gallery, qos=QOS, retain=True)
        if self._cfg.home_assistant.enabled:
            for topic, config in ha_discovery(
                self._topics, self._cameras, self._cfg.home_assistant, self._sw_version
            ):
                client.publish(topic, encode(config), qos=QOS, retain=True)
        self._connected.set()
        self._wake.set()

    def _on_connect_fail(self, _c: Any, _u: Any) -> None:
        # paho gives no detail here (refused TCP, DNS, TLS verification); the host says where to look.
        text = f"connection failed to {self._mqtt.host}:{self._mqtt.port} (network, DNS or TLS)"
        self._set_error(text)
        self._bump("connect_failures")
        self._failed_attempts += 1
        self._problems.log(logging.WARNING, f"MQTT {text}; retrying, events stay in the outbox")

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if was_connected and not self._stop.is_set():
            self._bump("disconnects")
            self._set_error(f"disconnected: {reason}")
            log.warning("MQTT broker connection lost (%s); events stay in the outbox", reason)

    def _on_publish(self, _c: Any, _u: Any, mid: int, _reason: Any, _props: Any) -> None:
        self._acks.append(mid)
        self._wake.set()

    # -- sender thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        inflight: dict[int, int] = {}  # paho mid -> outbox row id
        cursor = 0  # highest row id handed to paho; rows above it are still to send
        next_prune = next_stats = time.monotonic()
        next_stats += self._cfg.stats_interval_s
        while not self._stop.is_set():
            self._heartbeat()
            self._wake.wait(_TICK_S)
            self._wake.clear()  # before reading news, so a set() racing with us is never lost
            try:
                self._settle_acks(inflight)
                now = time.monotonic()
                if now >= next_prune:
                    self._outbox.prune()
                    next_prune = now + _PRUNE_EVERY_S
                if now >= next_stats:
                    next_stats = now + self._cfg.stats_interval_s
                    self.publish_stats()
                if self.connected:
                    cursor = self._send_more(inflight, cursor)
                self._inflight_count = len(inflight)
            except Exception:  # the sender must survive a full disk or a paho surprise; retry next tick
                log.exception("MQTT sender error; retrying")
                self._stop.wait(1.0)

    def _settle_acks(self, inflight: dict[int, int]) -> None:
        done: list[int] = []
        while self._acks:
            row_id = inflight.pop(self._acks.popleft(), None)
            if row_id is not None:  # None: status/gallery/stats, which are not outbox rows
                done.append(row_id)
        if done:
            self._outbox.delete(done)
            self._bump("messages_acked", len(done))

    def _send_more(self, inflight: dict[int, int], cursor: int) -> int:
        room = self._mqtt.inflight_window - len(inflight)
        if room <= 0:
            return cursor
        for row in self._outbox.peek(cursor, room):
            self._outbox.pin([row.id])  # pinned before paho has it, so a bound cannot count it as lost
            info = self._hand_over(row)
            if info is None:
                return row.id
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                self._outbox.unpin([row.id])  # paho's queue is full: retry this row next tick
                return cursor
            # SUCCESS, or NO_CONN after a race with a disconnect: paho keeps it and sends it on reconnect.
            inflight[info.mid] = row.id
            cursor = row.id
            self._bump("messages_sent")
        return cursor

    def _hand_over(self, row: OutboxRow) -> paho.MQTTMessageInfo | None:
        try:
            payload = stamp(row.payload, row.id, self._clock()) if row.stamp else row.payload
            return self._client.publish(row.topic, payload, qos=QOS, retain=row.retain)
        except ValueError as exc:  # bad JSON, topic or size: it would block the queue forever
            log.error("dropping outbox row %d for %s: %s", row.id, row.topic, exc)
            self._outbox.drop([row.id], DROP_INVALID)
            return None

    # -- small helpers ---------------------------------------------------------------------------------

    def _bump(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + n

    def _set_error(self, text: str) -> None:
        with self._lock:
            self._last_error = text
