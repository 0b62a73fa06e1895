"""Announcements: a retained QoS 1 `<announce_prefix>/hub/groups/<group_id>/version` per local group, so
edges pull the moment a group changes instead of at their next poll (docs/sync.md, Announcements).

The feed is the source, polled every `announce_poll_s`: a write by another process (`enroll`, `gallery
import`) is announced like one through the API. A poll costs one indexed lookup of the feed's AUTOINCREMENT
counter; only when it moved are the heads of the groups with new operations read (heads only grow, so the
operations after the last poll are enough). After a (re)connect every group is published again, so a broker
that lost its retained messages gets them back.

A deleted group gets an empty retained message, which removes the topic from the broker; so does a retained
version of a group this hub does not have (deleted while the hub was down): the hub subscribes to its own
topics and clears what it finds there that is not one of its groups. So each hub needs its own prefix.

Never in the hub's way: paho connects and reconnects in its own thread, publishing happens only while
connected (the queue is bounded anyway), and `stop()` is bounded.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from agent.errors import ConfigError
from agent.gallery import GalleryStore, feed
from agent.ops.log import RateLimitedLog
from agent.publish.config import MqttConfig, read_password
from agent.sync.config import HubConfig

log = logging.getLogger(__name__)

QOS = 1
_QUEUE = 1000  # paho's outgoing queue at most (announcements are retained: losing one on a full queue is
# repaired by the next reconnect's full re-publish)
_SEEN_MAX = 10_000  # retained topics found on the broker waiting for a check
_BAD_TOPIC = set("/+#\x00")


def topic_for(prefix: str, group_id: str) -> str:
    return f"{prefix}/hub/groups/{group_id}/version"


def topic_safe(group_id: str) -> bool:
    """A group id that is one MQTT topic level (no '/', no wildcards); others are not announced."""
    return bool(group_id) and not (_BAD_TOPIC & set(group_id)) and len(group_id.encode()) <= 1024


def payload(group_id: str, head: int, at: float) -> bytes:
    return json.dumps(
        {"group_id": group_id, "head": head, "at": round(at, 3)}, separators=(",", ":")
    ).encode()


def _counter(store: GalleryStore) -> int:
    """The feed's sequence counter: moves with every new operation, never back (compaction too)."""
    return store.feed_counter()


def _local_groups(store: GalleryStore) -> set[str]:
    return {g for (g,) in store.read("SELECT group_id FROM groups WHERE origin IS NULL")}


class Announcer:
    """Publishes group heads while connected; `start()` never waits for the broker."""

    def __init__(
        self, config: HubConfig, store: GalleryStore, clock: Callable[[], float] = time.time
    ) -> None:
        if config.announce is None:
            raise ConfigError("Announcer needs hub.announce (a broker)")
        self._cfg = config
        self._mqtt: MqttConfig = config.announce
        self._store = store
        self._clock = clock
        self._prefix = config.announce_prefix
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._resend = threading.Event()  # set on every connect: publish every group again
        self._seen: deque[str] = deque(maxlen=_SEEN_MAX)  # group ids of retained topics on the broker
        self._heads: dict[str, int] = {}  # what should be on the broker
        self._sent: dict[str, int] = {}  # what was published on this connection
        self._counter = -1
        self._skipped: set[str] = set()
        self._problems = RateLimitedLog(log, 60.0)
        self.published = 0
        self.cleared = 0
        self._client = self._make_client(read_password(self._mqtt))
        self._thread = threading.Thread(target=self._run, name="hub-announce", daemon=True)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _make_client(self, password: str | None) -> paho.Client:
        m = self._mqtt
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=m.client_id or f"face-agent-hub-{socket.gethostname()}"[:64],
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
                raise ConfigError(f"hub.announce TLS setup failed: {exc}") from exc
        client.reconnect_delay_set(m.reconnect_min_s, m.reconnect_max_s)
        client.max_queued_messages_set(_QUEUE)
        client.connect_timeout = m.connect_timeout_s
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    # -- paho's thread: flags and a deque only ---------------------------------------------------------------

    def _on_connect(self, client: paho.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            self._problems.log(logging.WARNING, f"hub announcements: broker refused the connection: {reason}")
            return
        self._problems.clear()
        client.subscribe(f"{self._prefix}/hub/groups/+/version", qos=QOS)
        self._resend.set()
        self._connected.set()

    def _on_disconnect(self, *_args: object) -> None:
        self._connected.clear()

    def _on_message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if msg.retain and msg.payload and len(parts) >= 4:
            self._seen.append(parts[-2])

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._client.connect_async(self._mqtt.host, self._mqtt.port, keepalive=self._mqtt.keepalive_s)
        self._client.loop_start()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(max(0.1, deadline - time.monotonic()))
        self._client.disconnect()
        # paho's loop_stop joins its thread without a bound; one stuck in a connect attempt costs up to
        # connect_timeout_s, so it is waited for here only until the deadline.
        stopper = threading.Thread(target=self._client.loop_stop, name="hub-announce-stop", daemon=True)
        stopper.start()
        stopper.join(max(0.1, deadline - time.monotonic()))

    # -- the poll loop ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception as exc:  # a busy database or a paho error: the next poll tries again
                self._problems.log(logging.WARNING, f"hub announcements: {type(exc).__name__}: {exc}")
            self._stop.wait(self._cfg.announce_poll_s)

    def poll(self) -> None:
        """Bring `_heads` up to date with the feed, then publish what the broker lacks (when connected)."""
        counter = _counter(self._store)
        if counter != self._counter:
            self._refresh(counter)
        if not self.connected:
            return
        if self._resend.is_set():
            self._resend.clear()
            self._sent.clear()
        for gid, head in self._heads.items():
            if self._sent.get(gid) != head and self._publish(gid, payload(gid, head, self._clock())):
                self._sent[gid] = head
                self.published += 1
        for gid in [g for g in self._sent if g not in self._heads]:
            if self._publish(gid, b""):
                del self._sent[gid]
                self.cleared += 1
        while self._seen:
            gid = self._seen.popleft()
            if gid not in self._heads and gid not in self._sent and self._publish(gid, b""):
                self.cleared += 1

    def _refresh(self, counter: int) -> None:
        if self._counter < 0:
            new = feed.heads(self._store)
        else:
            sql = "SELECT group_id, MAX(seq) FROM feed WHERE seq > ? GROUP BY group_id"
            new = {g: int(s) for g, s in self._store.read(sql, (self._counter,))}
        local = _local_groups(self._store)
        heads = {g: max(self._heads.get(g, 0), new.get(g, 0)) for g in local}
        for gid in [g for g in heads if not topic_safe(g)]:
            del heads[gid]
            if gid not in self._skipped:
                self._skipped.add(gid)
                log.warning("hub announcements: group id %r is not one MQTT topic level; not announced", gid)
        self._heads, self._counter = heads, counter

    def _publish(self, group_id: str, body: bytes) -> bool:
        info = self._client.publish(topic_for(self._prefix, group_id), body, qos=QOS, retain=True)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS
