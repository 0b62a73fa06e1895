"""Payload builder, access policy and the no-broker sinks (pure code and real files)."""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from agent.errors import InputError
from agent.publish.access import decide
from agent.publish.challenge import ChallengeMessage
from agent.publish.config import AccessPolicyConfig, HomeAssistantConfig, PublishConfig
from agent.publish.payloads import RecognitionEvent, event_messages, event_payload, ha_discovery, stamp
from agent.publish.sink import JsonlFileSink, StdoutSink
from agent.publish.topics import Topics
from agent.types import Box

SNAPSHOT = "faces/dlib/examples/johns/John_Salley/000179_02159509.jpg"
WEBP_NAMED_JPG = "faces/deepface/images/img47.jpg"  # the data README notes it is really WebP


def known(**over) -> RecognitionEvent:
    fields = dict(
        camera_id="door",
        captured_at=1_700_000_000.25,
        box=Box(1.4, 2.6, 51.4, 62.6),
        model_id="m",
        person_id="p1",
        name="Ann",
        user_info='{"badge": 7}',
        group_id="staff",
        score=88.0,
        far_level=5,
        quality=0.7,
        quality_level="NORMAL",
        liveness=0.9,
        liveness_level="HIGH",
        liveness_reasons=(),
        liveness_challenge="passed",
        track_id=4,
    )
    fields.update(over)
    return RecognitionEvent(**fields)


def test_recognized_payload_has_every_documented_field() -> None:
    payload = event_payload(known(), "dev")
    assert payload == {
        "schema": "face-agent/recognized/1",
        "event_id": payload["event_id"],
        "device_id": "dev",
        "camera_id": "door",
        "track_id": 4,
        "box": {"x": 1, "y": 3, "w": 50, "h": 60},
        "quality": 0.7,
        "quality_level": "NORMAL",
        "liveness": 0.9,
        "liveness_level": "HIGH",
        "liveness_reasons": [],
        "liveness_challenge": "passed",
        "depth": None,  # a camera without a depth check (with one: tests/test_depth_liveness.py)
        "model_id": "m",
        "captured_at": "2023-11-14T22:13:20.250Z",
        "source": None,  # a live camera; files and folders name the file and frame (tests/test_first_hour.py)
        "has_snapshot": False,
        "person_id": "p1",
        "name": "Ann",
        "user_info": '{"badge": 7}',
        "group_id": "staff",
        "score": 88.0,
        "far_level": 5,
        "gallery_stale": False,  # true: matched in a mirror the edge has not synced lately (docs/sync.md)
    }
    assert len(payload["event_id"]) == 32
    from_file = event_payload(replace(known(), source_file="door.mp4", source_frame=120), "dev")
    assert from_file["source"] == {"file": "door.mp4", "frame": 120}
    stamped = json.loads(stamp(json.dumps(payload).encode(), 42, 1_700_000_001.0))
    assert stamped["seq"] == 42 and stamped["published_at"] == "2023-11-14T22:13:21.000Z"


@pytest.mark.parametrize(
    "over",
    [
        {"camera_id": "door/1"},
        {"camera_id": "#"},
        {"score": math.nan},
        {"score": 101.0},
        {"quality": 1.5},
        {"far_level": 12},
        {"track_id": -1},
        {"liveness_level": "MAX"},
        {"liveness_reasons": ["no_liveness_result"]},
        {"liveness_reasons": ("x" * 65,)},
        {"liveness_challenge": "maybe"},
        {"person_id": None},  # unknown face that still carries a name
        {"model_id": ""},
        {"captured_at": math.inf},
    ],
)
def test_bad_events_raise_input_error(over: dict) -> None:
    with pytest.raises(InputError) as err:
        known(**over)
    assert err.value.code in ("invalid_event", "invalid_topic_level")


def test_unknown_payload_and_topic() -> None:
    event = RecognitionEvent(camera_id="gate", captured_at=1.0, box=Box(0, 0, 9, 9), model_id="m", score=33.0)
    cfg = PublishConfig(device_id="dev")
    (message,), skipped = event_messages(event, Topics("fa", "dev"), cfg)
    assert message.topic == "fa/dev/cameras/gate/unknown" and not skipped and message.stamp
    body = json.loads(message.payload)
    assert body["schema"] == "face-agent/unknown/1" and body["best_score"] == 33.0 and "name" not in body


def test_snapshots_checked_and_bounded(data_dir: Path) -> None:
    jpeg = (data_dir / SNAPSHOT).read_bytes()
    cfg = PublishConfig(device_id="dev", snapshots=True)
    messages, skipped = event_messages(known(), Topics("fa", "dev"), cfg, jpeg)
    assert [m.topic.rsplit("/", 1)[1] for m in messages] == ["recognized", "snapshot"] and not skipped
    assert messages[1].payload == jpeg and json.loads(messages[0].payload)["has_snapshot"] is True
    with pytest.raises(InputError) as err:
        event_messages(known(), Topics("fa", "dev"), cfg, (data_dir / WEBP_NAMED_JPG).read_bytes())
    assert err.value.code == "invalid_snapshot"
    small = PublishConfig(device_id="dev", snapshots=True, snapshot_max_bytes=1024)
    messages, skipped = event_messages(known(), Topics("fa", "dev"), small, jpeg)
    assert skipped and len(messages) == 1 and json.loads(messages[0].payload)["has_snapshot"] is False


def test_access_policy_grants_only_with_all_evidence() -> None:
    policy = AccessPolicyConfig(enabled=True, allowed_groups=("staff",), min_far_level=4)
    assert decide(known(), policy).granted
    assert decide(known(group_id="visitors"), policy).reasons == ("group_not_allowed",)
    assert decide(known(far_level=3), policy).reasons == ("far_level_too_low",)
    assert decide(known(far_level=None), policy).reasons == ("far_level_missing",)
    assert decide(known(quality_level="LOW"), policy).reasons == ("quality_too_low",)
    assert decide(known(liveness_level="LOW"), policy).reasons == ("liveness_too_low",)
    assert decide(known(gallery_stale=True), policy).reasons == ("gallery_stale",)  # a stale mirror
    # Fail closed: liveness not run at all is a denial, not a pass.
    missing = decide(known(liveness=None, liveness_level=None, quality_level=None), policy)
    assert not missing.granted and missing.reasons == ("quality_missing", "liveness_missing")
    stranger = RecognitionEvent(camera_id="door", captured_at=1.0, box=Box(0, 0, 9, 9), model_id="m")
    assert decide(stranger, policy).reasons == ("unknown_person", "quality_missing", "liveness_missing")
    lax = AccessPolicyConfig(min_far_level=0, required_quality="NONE", required_liveness="NONE")
    assert decide(known(far_level=None, quality_level=None, liveness_level=None), lax).granted
    assert decide(known(group_id="anyone"), AccessPolicyConfig()).granted  # empty list: any group


def test_ha_discovery_shape() -> None:
    configs = dict(
        ha_discovery(Topics("fa", "dev"), ["door"], HomeAssistantConfig(presence_off_delay_s=9), "1.0")
    )
    assert set(configs) == {
        "homeassistant/sensor/dev/door_last_person/config",
        "homeassistant/binary_sensor/dev/door_face_present/config",
    }
    binary = configs["homeassistant/binary_sensor/dev/door_face_present/config"]
    assert binary["off_delay"] == 9 and binary["state_topic"] == "fa/dev/cameras/door/presence"
    json.dumps(configs)  # plain JSON


def test_stdout_sink_writes_json_lines() -> None:
    out = io.StringIO()
    sink = StdoutSink(PublishConfig(device_id="dev", access={"enabled": True}), out)
    sink.publish_event(known())
    sink.publish_gallery_version("g1", persons=1, faces=2)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["topic"] for line in lines] == [
        "face-agent/dev/cameras/door/recognized",
        "face-agent/dev/cameras/door/access",
        "face-agent/dev/gallery",
    ]
    assert lines[0]["payload"]["seq"] == 1 and lines[1]["payload"]["seq"] == 2
    assert lines[1]["payload"]["decision"] == "granted" and lines[2]["payload"]["version"] == "g1"


def test_jsonl_file_sink_rotates_at_its_bound(tmp_path: Path) -> None:
    path = tmp_path / "events" / "events.jsonl"
    sink = JsonlFileSink(PublishConfig(device_id="dev", jsonl_path=path, jsonl_max_bytes=4096))
    for i in range(20):
        sink.publish_event(known(track_id=i))
    sink.close()
    rotated = path.with_name("events.jsonl.1")
    assert path.stat().st_size <= 4096 and rotated.stat().st_size <= 4096
    current = [json.loads(line)["payload"]["track_id"] for line in path.read_text().splitlines()]
    older = [json.loads(line)["payload"]["track_id"] for line in rotated.read_text().splitlines()]
    assert current[-1] == 19 and older[-1] == current[0] - 1  # continuous across the rotation


def test_build_sink_picks_the_output_from_config(tmp_path: Path) -> None:
    from agent.publish import build_sink
    from agent.publish.mqtt import MqttPublisher

    assert isinstance(build_sink(PublishConfig(device_id="dev")), StdoutSink)
    file_sink = build_sink(PublishConfig(device_id="dev", jsonl_path=tmp_path / "e.jsonl"))
    assert isinstance(file_sink, JsonlFileSink)
    file_sink.close()
    cfg = PublishConfig(device_id="dev", mqtt={"host": "127.0.0.1"}, outbox={"path": tmp_path / "o.sqlite3"})
    publisher = build_sink(cfg, ["door"])  # built, not started: no connection attempted
    assert isinstance(publisher, MqttPublisher) and publisher.topics.recognized("door").startswith(
        "face-agent/dev/"
    )
    publisher.close(timeout=1)


def challenge(**over) -> ChallengeMessage:
    fields = dict(
        camera_id="kiosk",
        track_id=3,
        challenge_id="c" * 32,
        instruction="look_up",
        text="look up",
        state="issued",
        issued_at=1_700_000_000.5,
        deadline=1_700_000_006.5,
        at=1_700_000_000.5,
        person_id="p1",
        step=2,
        steps=3,
    )
    fields.update(over)
    return ChallengeMessage(**fields)


def test_challenge_messages_on_their_own_topic() -> None:
    out = io.StringIO()
    sink = StdoutSink(PublishConfig(device_id="dev"), out)
    sink.publish_challenge(challenge())
    sink.publish_challenge(challenge(state="timed_out", at=1_700_000_007.0, reason="late"))
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["topic"] for line in lines] == ["face-agent/dev/cameras/kiosk/challenge"] * 2
    issued, decided = (line["payload"] for line in lines)
    assert issued == {
        "schema": "face-agent/challenge/1",
        "challenge_id": "c" * 32,
        "device_id": "dev",
        "camera_id": "kiosk",
        "track_id": 3,
        "person_id": "p1",
        "state": "issued",
        "instruction": "look_up",
        "text": "look up",
        "step": 2,
        "steps": 3,
        "reason": None,
        "issued_at": "2023-11-14T22:13:20.500Z",
        "deadline": "2023-11-14T22:13:26.500Z",
        "decided_at": None,
        "seq": 1,
        "published_at": issued["published_at"],
    }
    assert decided["state"] == "timed_out" and decided["decided_at"] == "2023-11-14T22:13:27.000Z"
    assert decided["reason"] == "late"


@pytest.mark.parametrize(
    "over",
    [
        {"camera_id": "kiosk/1"},
        {"instruction": "smile"},
        {"text": "turn your head to your right"},  # the text must be the instruction's own
        {"state": "maybe"},
        {"track_id": -1},
        {"challenge_id": ""},
        {"deadline": 1_600_000_000.0},  # before it was issued
        {"at": math.nan},
        {"step": 4},  # beyond steps
        {"step": 0},
        {"steps": 6},
        {"reason": "bored"},
        {"reason": "early"},  # issued: no reason
        {"state": "passed", "reason": "late"},
        {"step": True},
    ],
)
def test_bad_challenge_messages_raise_input_error(over: dict) -> None:
    with pytest.raises(InputError):
        challenge(**over)
