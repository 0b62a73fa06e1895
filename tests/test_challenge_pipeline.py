"""The HIGH liveness challenge wired end to end, on the real head turn of the Hamilton clip.

Lin-Manuel Miranda's close-up track starts at 2.7 s and is recognized at about 3.0 s; from 3.3 s he turns to
his right (yaw about +5 to -37 degrees, tests/test_challenge_real.py). The instruction is forced (the
pipeline's `challenge_chooser`), everything else is real: engine, gallery, tracker, liveness, the MQTT
publisher with its outbox and a Mosquitto broker, observed by a paho subscriber.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import cv2
import pytest
from test_pipeline import HAMILTON, clip, enrol
from test_publish_mqtt import Subscriber, make_cfg

from agent.capture import CaptureWorker, open_source
from agent.config import AgentConfig, RecognitionConfig, parse_model
from agent.errors import ConfigError
from agent.gallery import Gallery, GalleryConfig, Matcher, ScoreMap
from agent.gates.challenge import ChallengeConfig
from agent.publish.mqtt import MqttPublisher
from agent.recognition.pipeline import RecognitionPipeline
from agent.recognition.tracking import FaceTracker, Observation, TrackerSettings

# The clip holds one real head turn, so the wiring is checked with a one-step challenge. The turn is already
# under way when the track is recognized (it is a recording), which the default onset window rightly calls
# `early`: the wiring test lets the response start at once (onset_min_s 0). The timing rules:
# tests/test_challenge_steps.py; chance passes of recordings: scripts/challenge_eval.py.
ONE_STEP = ChallengeConfig(steps=1, onset_min_s=0.0)


@pytest.fixture(scope="module")
def matcher(agent_engine, agent_thresholds, data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    gallery = Gallery(GalleryConfig(path=tmp_path_factory.mktemp("gallery-challenge")))
    enrol(agent_engine, gallery, data_dir)
    yield Matcher(gallery, agent_engine.model_id, ScoreMap(agent_thresholds), gallery.config)
    gallery.close()


def run_kiosk(engine, matcher, data_dir: Path, broker, tmp_path: Path, instruction: str):
    """The clip through the real pipeline into a real broker; returns (messages by topic kind, stats)."""
    device = "kiosk" + uuid.uuid4().hex[:6]
    sub = Subscriber(broker.port, f"face-agent/{device}/#")
    publisher = MqttPublisher(make_cfg(tmp_path, broker.port, device_id=device), ["kiosk"])
    cam = clip(data_dir, HAMILTON, cam="kiosk", max_fps=10, min_face_px=30, liveness_level="HIGH")
    cam = cam.model_copy(update={"liveness_challenge": ONE_STEP})
    wake = threading.Event()
    worker = CaptureWorker(cam, open_source(cam), wake=wake)
    cfg = RecognitionConfig(group_id="door", cooldown_s=0)
    chosen: list[str] = []

    def choose() -> str:
        chosen.append(instruction)
        return instruction

    publisher.start()
    pipeline = RecognitionPipeline(
        engine, matcher, cfg, [worker], publisher, wake=wake, challenge_chooser=choose
    )
    try:
        pipeline.start()
        worker.start()
        assert pipeline.done.wait(120), "pipeline did not finish"
        assert publisher.wait_connected(10) and publisher.flush(20), "outbox not drained"
        sub.wait_for(lambda m: len(m) >= publisher.stats()["counters"]["messages_acked"], timeout=10)
    finally:
        worker.stop(5)
        pipeline.stop(5)
        publisher.close()
        sub.close()
    assert chosen, "no challenge was ever issued"
    by_kind: dict[str, list[dict]] = {}
    for topic in {t for t, _, _ in sub.messages}:
        if topic.endswith(("/recognized", "/unknown", "/challenge")):
            by_kind.setdefault(topic.rsplit("/", 1)[1], []).extend(sub.json_on(topic))
    return by_kind, pipeline.stats()["cameras"]["kiosk"]


def closeup(messages: list[dict]) -> list[dict]:
    """Messages of the close-up track (his small face top right is a separate, earlier track)."""
    track = next(m["track_id"] for m in messages if m.get("box", {}).get("w", 0) > 80)
    return sorted((m for m in messages if m["track_id"] == track), key=lambda m: m["seq"])


def test_the_requested_turn_passes_high_and_the_kiosk_sees_it(
    agent_engine, matcher, data_dir, mqtt_broker, tmp_path
):
    kinds, stats = run_kiosk(agent_engine, matcher, data_dir, mqtt_broker, tmp_path, "turn_right")
    events = closeup(kinds["recognized"])
    track = events[0]["track_id"]
    challenges = sorted((c for c in kinds["challenge"] if c["track_id"] == track), key=lambda c: c["seq"])
    # Recognized at once, challenge pending; then the follow-up a door or kiosk acts on, passing HIGH.
    assert [e["liveness_challenge"] for e in events] == ["pending", "passed"], events
    first, follow = events
    assert first["liveness_reasons"] == ["no_liveness_result"] and first["person_id"] == "lin-manuel"
    assert follow["liveness_level"] == "HIGH" and follow["liveness_reasons"] == []
    # The kiosk's messages: issued after the greeting, the outcome before the follow-up it allowed.
    assert [c["state"] for c in challenges] == ["issued", "passed"]
    issued, passed = challenges
    assert first["seq"] < issued["seq"] < passed["seq"] < follow["seq"]
    assert issued["schema"] == "face-agent/challenge/1" and issued["camera_id"] == "kiosk"
    assert issued["instruction"] == "turn_right" and issued["text"] == "turn your head to your right"
    assert issued["person_id"] == "lin-manuel" and issued["decided_at"] is None
    assert passed["challenge_id"] == issued["challenge_id"] and passed["decided_at"] is not None
    assert issued["issued_at"] < issued["deadline"] and passed["decided_at"] <= passed["deadline"]
    assert stats["challenges_passed"] >= 1 and stats["liveness_updates"] >= 1
    assert stats["challenges_issued"] == len({c["challenge_id"] for c in kinds["challenge"]})


def test_the_opposite_turn_is_refused_and_never_opens(agent_engine, matcher, data_dir, mqtt_broker, tmp_path):
    kinds, stats = run_kiosk(agent_engine, matcher, data_dir, mqtt_broker, tmp_path, "turn_left")
    events = closeup(kinds["recognized"])
    track = events[0]["track_id"]
    assert len(events) == 1, "a failed challenge must not give the track a follow-up event"
    assert events[0]["liveness_challenge"] == "pending"
    states = [
        c["state"] for c in sorted(kinds["challenge"], key=lambda c: c["seq"]) if c["track_id"] == track
    ]
    assert states == ["issued", "failed"]  # he turned the other way: one challenge per track, no retry
    # No event of any track passed HIGH without its challenge having passed.
    for e in kinds["recognized"]:
        assert e["liveness_level"] != "HIGH" or e["liveness_challenge"] == "passed", e
    assert stats["challenges_failed"] >= 1 and stats["challenges_passed"] == 0


def _mirrored_turn(engine, data_dir: Path) -> list[tuple]:
    """(image, observations, t) of the clip's 2.7-4.6 s flipped left-right: he now turns to his left."""
    cap = cv2.VideoCapture(str(data_dir / HAMILTON))
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames, index = [], 0
    while True:
        ok, frame = cap.read()
        t = index / fps
        index += 1
        if not ok or t > 4.6:
            break
        if t >= 2.7 and index % 2 == 0:  # 15 fps
            image = cv2.flip(frame, 1)
            faces = [e for e in engine.analyze(image, 10) if e.face.box.width >= 30]
            obs = [Observation(e.face.box, e.vector, 1.0, True, face=e.face) for e in faces]
            frames.append((image, obs, t))
    cap.release()
    return frames


@pytest.mark.parametrize("instruction", ["turn_left", "turn_right"])
def test_mirrored_turn_through_the_tracker(agent_engine, matcher, data_dir, instruction):
    """Directions are the subject's own: in the mirror image he turns to his left, so only turn_left passes;
    turn_right leaves the live track refused at HIGH with `challenge_failed` alone."""
    settings = TrackerSettings(cooldown_s=0, liveness_level="HIGH", challenge=ONE_STEP)
    tracker = FaceTracker(
        settings, lambda v: (matcher.search("door", v, 1, 0.0) or [None])[0], choose=lambda: instruction
    )
    events, notices = [], []
    for image, obs, t in _mirrored_turn(agent_engine, data_dir):
        events += tracker.update(obs, t, image)
        notices += tracker.pop_challenges()
    states = tracker.liveness_states()
    closeup = next(e.track_id for e in events if e.known and e.observation.box.width > 80)
    known = [e for e in events if e.known and e.track_id == closeup]  # turned away, the box narrows
    assert known and known[0].candidate.outer_id == "lin-manuel"
    live = states[known[0].track_id]
    outcome = [n.state for n in notices if n.track_id == known[0].track_id]
    if instruction == "turn_left":
        assert outcome == ["issued", "passed"]
        assert live.passed and live.level == "HIGH" and live.challenge == "passed"
        assert [e.liveness_update for e in known] == [False, True]
    else:
        assert outcome == ["issued", "failed"]
        assert live.reasons == ("challenge_failed",) and live.challenge == "failed"
        assert live.level == "NORMAL"  # the same report without the challenge would pass HIGH's bounds
        assert [e.liveness_update for e in known] == [False]


def test_a_challenge_below_high_is_refused(agent_engine, matcher, data_dir):
    for cams, rec in (
        ([{"id": "k", "liveness_level": "NORMAL", "liveness_challenge": {}}], {"liveness_level": "HIGH"}),
        ([{"id": "k", "liveness_challenge": {}}], {"liveness_level": "NORMAL"}),
        ([{"id": "k", "liveness_challenge": {}}], {}),
    ):
        with pytest.raises(ConfigError, match="camera k: liveness_challenge needs liveness level HIGH"):
            parse_model(AgentConfig, {"cameras": cams, "recognition": rec})
    ok = parse_model(
        AgentConfig,
        {"cameras": [{"id": "k", "liveness_challenge": {}}], "recognition": {"liveness_level": "HIGH"}},
    )
    assert ok.cameras[0].liveness_challenge == ChallengeConfig()
    with pytest.raises(ConfigError, match="timeout_s"):
        parse_model(
            AgentConfig, {"cameras": [{"liveness_level": "HIGH", "liveness_challenge": {"timeout_s": 0}}]}
        )
    # Built directly (not through AgentConfig), the pipeline and the tracker refuse it too.
    cam = clip(data_dir, HAMILTON, cam="k", liveness_level="LOW")
    cam = cam.model_copy(update={"liveness_challenge": ChallengeConfig()})
    worker = CaptureWorker(cam, open_source(cam), wake=threading.Event())
    with pytest.raises(ConfigError) as err:
        RecognitionPipeline(
            agent_engine, matcher, RecognitionConfig(), [worker], None, wake=threading.Event()
        )
    assert err.value.code == "invalid_challenge_level"
    with pytest.raises(ConfigError):
        TrackerSettings(liveness_level="NORMAL", challenge=ChallengeConfig())
