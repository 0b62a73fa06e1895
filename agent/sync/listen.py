"""The edge's subscription to a hub's retained version announcements: a moved head wakes the syncer, so a
change on the hub reaches the door in about a second instead of one pull interval."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from agent.publish.config import MqttConfig
from agent.sync.mqtt import make_client, version_topic

log = logging.getLogger(__name__)


class AnnouncementListener:
    def __init__(
        self, m: MqttConfig, prefix: str, client_id: str, on_head: Callable[[str, int], None]
    ) -> None:
        self._m, self._on_head = m, on_head
        self._topic = version_topic(prefix, "+")
        self._client = make_client(m, client_id)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self.received = 0

    def start(self) -> AnnouncementListener:
        self._client.connect_async(self._m.host, self._m.port, keepalive=self._m.keepalive_s)
        self._client.loop_start()
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self._topic, qos=1)  # retained heads arrive at once: catch-up after an outage

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        parts = msg.topic.split("/")
        if len(parts) < 4:
            return
        if not msg.payload:  # the hub cleared the topic (group deleted): pull now, the listing says why
            self.received += 1
            self._on_head(parts[-2], -1)
            return
        try:
            head = json.loads(msg.payload)["head"]
        except (ValueError, KeyError, TypeError):
            log.warning("sync: ignored a malformed announcement on %s", msg.topic)
            return
        if isinstance(head, int):
            self.received += 1
            self._on_head(parts[-2], head)
