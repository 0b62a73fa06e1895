"""Publishing layer: MQTT (with a persistent outbox) or, without a broker, JSON lines on stdout or a file.

Owns topics, payloads, the access policy and the outbox; imports gates (outcome names) and ops; never
recognition, api or cli.

The app calls `build_sink` once with its `PublishConfig` slice and the camera ids; everything else talks to
the returned `EventSink`. See docs/mqtt.md for topics and payloads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agent.publish.access import AccessDecision, decide
from agent.publish.config import (
    AccessPolicyConfig,
    HomeAssistantConfig,
    MqttConfig,
    OutboxConfig,
    PublishConfig,
)
from agent.publish.payloads import SCHEMA_VERSION, RecognitionEvent
from agent.publish.sink import EventSink, JsonlFileSink, StdoutSink
from agent.publish.topics import Topics

__all__ = [
    "SCHEMA_VERSION",
    "AccessDecision",
    "AccessPolicyConfig",
    "EventSink",
    "HomeAssistantConfig",
    "JsonlFileSink",
    "MqttConfig",
    "OutboxConfig",
    "PublishConfig",
    "RecognitionEvent",
    "StdoutSink",
    "Topics",
    "build_sink",
    "decide",
]


def build_sink(
    cfg: PublishConfig,
    cameras: Sequence[str] = (),
    *,
    stats_provider: Callable[[], Mapping[str, Any]] | None = None,
    sw_version: str = "0",
    heartbeat: Callable[[], None] | None = None,
) -> EventSink:
    """The MQTT publisher when a broker is configured, else a JSON-lines sink. Call `start()` on it."""
    if cfg.mqtt is not None:
        from agent.publish.mqtt import MqttPublisher  # paho is imported only when a broker is configured

        return MqttPublisher(
            cfg, cameras, stats_provider=stats_provider, sw_version=sw_version, heartbeat=heartbeat
        )
    if cfg.jsonl_path is not None:
        return JsonlFileSink(cfg)
    return StdoutSink(cfg)
