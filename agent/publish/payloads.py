"""Versioned JSON payloads. Every JSON message carries `schema` = '<name>/<version>'; a consumer that sees an
unknown version should refuse it. Field meanings are documented in docs/mqtt.md.

`seq` and `published_at` are stamped by `stamp()` when a message actually leaves the agent, so they reflect
delivery after an outage, not the moment the event was queued.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from agent.errors import InputError
from agent.gates.challenge import OUTCOMES
from agent.gates.depth import DEPTH_REASONS
from agent.gates.ir_config import IR_REASONS
from agent.publish.access import AccessDecision, decide
from agent.publish.config import LEVELS, AccessPolicyConfig, HomeAssistantConfig, PublishConfig
from agent.publish.outbox import OutMessage
from agent.publish.topics import Topics, check_level
from agent.types import Box

SCHEMA_VERSION = 1
SCHEMA_RECOGNIZED = f"face-agent/recognized/{SCHEMA_VERSION}"
SCHEMA_UNKNOWN = f"face-agent/unknown/{SCHEMA_VERSION}"
SCHEMA_ACCESS = f"face-agent/access/{SCHEMA_VERSION}"
SCHEMA_GALLERY = f"face-agent/gallery/{SCHEMA_VERSION}"
SCHEMA_STATS = f"face-agent/stats/{SCHEMA_VERSION}"
MAX_TEXT = 4096  # name / user_info / ids beyond this are a caller bug, not something to ship over MQTT
CHALLENGE_STATES = (None, "pending", *OUTCOMES)
MAX_REASONS = 16  # reason codes per gate (the liveness gate has 9)


def _bad(message: str) -> InputError:
    return InputError(message, code="invalid_event")


def _check_number(name: str, value: float | None, low: float, high: float) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(f"{name} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise _bad(f"{name}={value} is outside [{low}, {high}]")


def _check_text(name: str, value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT):
        raise _bad(f"{name} must be a string of at most {MAX_TEXT} characters")


@dataclass(frozen=True)
class RecognitionEvent:
    """One appearance of a face on one camera. `person_id is None` means an unknown face.

    score: calibrated similarity 0..100 of the best gallery match (for unknown faces: the best rejected one).
    far_level: N when the score meets the threshold whose false-accept rate is 1 in 10**N; 0 when none.
    quality / liveness: gate scores 0..1; *_level: the strongest control level passed ("NONE" = none);
    None = the gate did not run or (liveness) has no result yet: an access policy that requires it denies.
    liveness_reasons: reason codes (agent.gates.liveness.REASONS) of the camera's liveness level; () = met;
    None = liveness is off on the camera.
    liveness_challenge: the track's active challenge, "pending" or its outcome; None = no challenge issued.
    depth_*: the track's evidence from the camera's liveness sensor, `depth_sensor` "depth" (cameras with
    `depth`, agent/gates/depth.py) or "ir" (cameras with `ir`, agent/gates/ir.py; `depth_ir_level` the face's
    IR grey level); depth_passed None = the camera has no such check; depth_required: the camera grants
    access only with passed evidence. Published as the payload's "depth" or "ir" object.
    """

    camera_id: str
    captured_at: float  # Unix time of the frame, seconds
    box: Box
    model_id: str
    person_id: str | None = None
    name: str | None = None
    user_info: str | None = None
    group_id: str | None = None
    score: float | None = None
    far_level: int | None = None
    quality: float | None = None
    quality_level: str | None = None
    liveness: float | None = None
    liveness_level: str | None = None
    liveness_reasons: tuple[str, ...] | None = None  # why the camera's liveness level is not met; () = met
    liveness_challenge: str | None = None
    track_id: int | None = None
    source_file: str | None = None  # files and folders: the file the deciding frame came from
    source_frame: int | None = None  # and its frame index in that file
    gallery_stale: bool = False  # matched in a mirrored group the edge has not synced for too long
    depth_sensor: str = "depth"
    depth_required: bool = False
    depth_passed: bool | None = None
    depth_relief_mm: float | None = None
    depth_ir_level: float | None = None
    depth_reasons: tuple[str, ...] = ()
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        check_level(self.camera_id, "camera id")
        _check_number("captured_at", self.captured_at, 0.0, 1e11)
        if not isinstance(self.box, Box):
            raise _bad("box must be an agent.types.Box")
        for name in ("x1", "y1", "x2", "y2"):
            _check_number(f"box.{name}", getattr(self.box, name), -1e6, 1e6)
        for name in ("model_id", "person_id", "name", "user_info", "group_id", "event_id", "source_file"):
            _check_text(name, getattr(self, name))
        if not self.model_id or not self.event_id:
            raise _bad("model_id and event_id must not be empty")
        _check_number("score", self.score, 0.0, 100.0)
        _check_number("quality", self.quality, 0.0, 1.0)
        _check_number("liveness", self.liveness, 0.0, 1.0)
        if self.far_level is not None and (
            not isinstance(self.far_level, int) or not 0 <= self.far_level <= 9
        ):
            raise _bad(f"far_level must be an int 0..9, got {self.far_level!r}")
        for name in ("track_id", "source_frame"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise _bad(f"{name} must be a non-negative int, got {value!r}")
        if (self.source_file is None) != (self.source_frame is None):
            raise _bad("source_file and source_frame go together")
        if self.liveness_reasons is not None and (
            not isinstance(self.liveness_reasons, tuple)
            or len(self.liveness_reasons) > MAX_REASONS
            or not all(isinstance(r, str) and 0 < len(r) <= 64 for r in self.liveness_reasons)
        ):
            raise _bad(f"liveness_reasons must be a tuple of at most {MAX_REASONS} short strings or None")
        if self.depth_passed is None and (self.depth_required or self.depth_reasons):
            raise _bad("depth_required and depth_reasons need a depth verdict (depth_passed)")
        codes = {"depth": DEPTH_REASONS, "ir": IR_REASONS}.get(self.depth_sensor)
        if codes is None:
            raise _bad("depth_sensor must be 'depth' or 'ir'")
        known_codes = all(r in codes for r in self.depth_reasons)
        consistent = bool(self.depth_reasons) == (self.depth_passed is False)
        if not known_codes or (self.depth_passed is not None and not consistent):
            raise _bad(f"depth_reasons must be codes of {codes}: empty when passed, given when not")
        _check_number("depth_relief_mm", self.depth_relief_mm, -1e4, 1e4)
        _check_number("depth_ir_level", self.depth_ir_level, 0.0, 255.0)
        if self.liveness_challenge not in CHALLENGE_STATES:
            raise _bad(f"liveness_challenge must be one of {CHALLENGE_STATES}")
        for name in ("quality_level", "liveness_level"):
            if getattr(self, name) not in (None, *LEVELS):
                raise _bad(f"{name} must be one of {LEVELS} or None")
        if self.person_id is None and any(v is not None for v in (self.name, self.user_info, self.group_id)):
            raise _bad("an unknown face (person_id None) cannot carry name, user_info or group_id")

    @property
    def is_known(self) -> bool:
        return self.person_id is not None


def iso_time(unix_s: float) -> str:
    """UTC ISO 8601 with milliseconds and a 'Z', e.g. 2024-05-01T12:00:00.123Z."""
    stamp = datetime.fromtimestamp(unix_s, tz=timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def _box(box: Box) -> dict[str, int]:
    x, y, w, h = box.as_xywh()
    return {"x": x, "y": y, "w": w, "h": h}


def _common(event: RecognitionEvent, device_id: str, schema: str, has_snapshot: bool) -> dict[str, Any]:
    return {
        "schema": schema,
        "event_id": event.event_id,
        "device_id": device_id,
        "camera_id": event.camera_id,
        "track_id": event.track_id,
        "box": _box(event.box),
        "quality": event.quality,
        "quality_level": event.quality_level,
        "liveness": event.liveness,
        "liveness_level": event.liveness_level,
        "liveness_reasons": list(event.liveness_reasons) if event.liveness_reasons is not None else None,
        "liveness_challenge": event.liveness_challenge,
        "depth": (
            None
            if event.depth_passed is None or event.depth_sensor != "depth"
            else {
                "passed": event.depth_passed,
                "required": event.depth_required,
                "relief_mm": event.depth_relief_mm,
                "reasons": list(event.depth_reasons),
            }
        ),
        **(
            {}
            if event.depth_passed is None or event.depth_sensor != "ir"
            else {
                "ir": {
                    "passed": event.depth_passed,
                    "required": event.depth_required,
                    "level": event.depth_ir_level,
                    "reasons": list(event.depth_reasons),
                }
            }
        ),
        "model_id": event.model_id,
        "captured_at": iso_time(event.captured_at),
        "source": (
            None if event.source_file is None else {"file": event.source_file, "frame": event.source_frame}
        ),
        "has_snapshot": has_snapshot,
    }


def event_payload(event: RecognitionEvent, device_id: str, *, has_snapshot: bool = False) -> dict[str, Any]:
    """The recognized or unknown payload for `event` (without `seq` / `published_at`, see `stamp`)."""
    if not event.is_known:
        payload = _common(event, device_id, SCHEMA_UNKNOWN, has_snapshot)
        payload["best_score"] = event.score
        return payload
    payload = _common(event, device_id, SCHEMA_RECOGNIZED, has_snapshot)
    payload.update(
        person_id=event.person_id,
        name=event.name,
        user_info=event.user_info,
        group_id=event.group_id,
        score=event.score,
        far_level=event.far_level,
        gallery_stale=event.gallery_stale,
    )
    return payload


def access_payload(
    event: RecognitionEvent, decision: AccessDecision, policy: AccessPolicyConfig, device_id: str
) -> dict[str, Any]:
    return {
        "schema": SCHEMA_ACCESS,
        "event_id": event.event_id,
        "device_id": device_id,
        "camera_id": event.camera_id,
        "person_id": event.person_id,
        "name": event.name,
        "group_id": event.group_id,
        "decision": "granted" if decision.granted else "denied",
        "granted": decision.granted,
        "reasons": list(decision.reasons),
        "policy": {
            "allowed_groups": list(policy.allowed_groups),
            "min_far_level": policy.min_far_level,
            "required_quality": policy.required_quality,
            "required_liveness": policy.required_liveness,
        },
        "captured_at": iso_time(event.captured_at),
    }


def gallery_payload(
    device_id: str, version: str, *, persons: int | None, faces: int | None, now: float
) -> dict[str, Any]:
    return {
        "schema": SCHEMA_GALLERY,
        "device_id": device_id,
        "version": version,
        "persons": persons,
        "faces": faces,
        "published_at": iso_time(now),
    }


def stats_payload(device_id: str, stats: Mapping[str, Any], now: float) -> dict[str, Any]:
    return {"schema": SCHEMA_STATS, "device_id": device_id, "published_at": iso_time(now), **stats}


def encode(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON; NaN/inf are refused so consumers never see non-standard JSON."""
    try:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise InputError(f"payload is not JSON-serialisable: {exc}", code="invalid_payload") from exc


def stamp(payload: bytes, seq: int, now: float) -> bytes:
    """Add the outbox sequence number and the send time to an encoded JSON object."""
    obj = json.loads(payload)
    obj["seq"] = seq
    obj["published_at"] = iso_time(now)
    return encode(obj)


JPEG_MAGIC = b"\xff\xd8\xff"


def event_messages(
    event: RecognitionEvent, topics: Topics, cfg: PublishConfig, snapshot: bytes | None = None
) -> tuple[list[OutMessage], bool]:
    """The ordered messages one event produces: event, then its snapshot, then the access decision.
    Returns (messages, snapshot_skipped). A snapshot that is not JPEG is a caller bug (InputError); one
    larger than cfg.snapshot_max_bytes is skipped so the event itself still goes out."""
    device_id = topics.device_id
    use_snapshot = cfg.snapshots and snapshot is not None
    if use_snapshot and (not isinstance(snapshot, (bytes, bytearray)) or not snapshot.startswith(JPEG_MAGIC)):
        raise InputError("snapshot must be JPEG bytes", code="invalid_snapshot")
    skipped = bool(use_snapshot and len(snapshot) > cfg.snapshot_max_bytes)
    use_snapshot = use_snapshot and not skipped
    topic = topics.recognized(event.camera_id) if event.is_known else topics.unknown(event.camera_id)
    payload = event_payload(event, device_id, has_snapshot=use_snapshot)
    messages = [OutMessage(topic, encode(payload), stamp=True)]
    if use_snapshot:
        messages.append(OutMessage(topics.snapshot(event.camera_id), bytes(snapshot)))
    if cfg.access.enabled:
        decision = decide(event, cfg.access)
        body = access_payload(event, decision, cfg.access, device_id)
        messages.append(OutMessage(topics.access(event.camera_id), encode(body), stamp=True))
    return messages, skipped


def ha_discovery(
    topics: Topics, cameras: Sequence[str], ha: HomeAssistantConfig, sw_version: str
) -> list[tuple[str, dict[str, Any]]]:
    """(topic, config) for one HA device per agent and, per camera, a 'last person' sensor and a
    'face present' binary sensor. All share the agent's status topic for availability."""
    device = {
        "identifiers": [f"face-agent-{topics.device_id}"],
        "name": f"Face agent {topics.device_id}",
        "manufacturer": "face-agent",
        "model": "Edge face recognition agent",
        "sw_version": sw_version,
    }
    common = {
        "availability_topic": topics.status,
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device,
    }
    configs: list[tuple[str, dict[str, Any]]] = []
    for camera in cameras:
        sensor_id = f"{camera}_last_person"
        configs.append(
            (
                topics.discovery("sensor", sensor_id),
                {
                    **common,
                    "name": f"{camera} last person",
                    "unique_id": f"{topics.device_id}_{sensor_id}",
                    "state_topic": topics.recognized(camera),
                    "value_template": "{{ value_json.name or value_json.person_id }}",
                    "json_attributes_topic": topics.recognized(camera),
                    "icon": "mdi:account-check",
                },
            )
        )
        presence_id = f"{camera}_face_present"
        configs.append(
            (
                topics.discovery("binary_sensor", presence_id),
                {
                    **common,
                    "name": f"{camera} face present",
                    "unique_id": f"{topics.device_id}_{presence_id}",
                    "state_topic": topics.presence(camera),
                    "payload_on": "ON",
                    "payload_off": "OFF",
                    "off_delay": ha.presence_off_delay_s,
                    "device_class": "occupancy",
                },
            )
        )
    return configs
