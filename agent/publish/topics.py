"""Topic names: `<prefix>/<device_id>/...`. Every level is validated so no wildcard or stray '/' gets in."""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.errors import InputError
from agent.publish.config import TOPIC_LEVEL_RE

# Object ids are '<camera id>_<suffix>', so they may be longer than one configured level.
_OBJECT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def check_level(value: str, what: str) -> str:
    """`value` if it is one safe topic level, else InputError (a camera id with '/' or '#' is a bug)."""
    if not isinstance(value, str) or not TOPIC_LEVEL_RE.match(value):
        raise InputError(
            f"{what} {value!r} is not 1-64 letters, digits, '_' or '-'", code="invalid_topic_level"
        )
    return value


@dataclass(frozen=True)
class Topics:
    """All topics of one agent. Camera topics are methods because cameras are only known at call time."""

    prefix: str
    device_id: str
    discovery_prefix: str = "homeassistant"

    def __post_init__(self) -> None:
        for level in self.prefix.split("/"):
            check_level(level, "topic prefix level")
        check_level(self.device_id, "device id")
        check_level(self.discovery_prefix, "discovery prefix")

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device_id}"

    @property
    def status(self) -> str:
        """Retained 'online' / 'offline' (the last will)."""
        return f"{self.base}/status"

    @property
    def gallery(self) -> str:
        """Retained gallery version."""
        return f"{self.base}/gallery"

    @property
    def stats(self) -> str:
        return f"{self.base}/stats"

    def camera(self, camera_id: str) -> str:
        return f"{self.base}/cameras/{check_level(camera_id, 'camera id')}"

    def recognized(self, camera_id: str) -> str:
        return f"{self.camera(camera_id)}/recognized"

    def unknown(self, camera_id: str) -> str:
        return f"{self.camera(camera_id)}/unknown"

    def snapshot(self, camera_id: str) -> str:
        return f"{self.camera(camera_id)}/snapshot"

    def access(self, camera_id: str) -> str:
        return f"{self.camera(camera_id)}/access"

    def challenge(self, camera_id: str) -> str:
        """Liveness challenges for the camera's kiosk screen: issued, then decided (docs/mqtt.md)."""
        return f"{self.camera(camera_id)}/challenge"

    def presence(self, camera_id: str) -> str:
        """'ON' whenever a face is seen (live only, never replayed); drives the HA binary sensor."""
        return f"{self.camera(camera_id)}/presence"

    def discovery(self, component: str, object_id: str) -> str:
        """HA discovery config topic: <discovery_prefix>/<component>/<device_id>/<object_id>/config."""
        check_level(component, "HA component")
        if not _OBJECT_ID_RE.match(object_id):
            raise InputError(f"HA object id {object_id!r} is not topic-safe", code="invalid_topic_level")
        return f"{self.discovery_prefix}/{component}/{self.device_id}/{object_id}/config"
