"""The camera loop's taps for the console (agent/recognition/observe.py), fed by a real tracker with faces the
real engine found in a real photo: what it shows, and that every buffer stays bounded."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
from console_support import LIN_PHOTO

from agent.capture.worker import Frame
from agent.console.review import cluster
from agent.gallery.matcher import FAR_SCORES, ScoreMap
from agent.recognition.observe import FrameObserver
from agent.recognition.tracking import FaceTracker, Observation, TrackerSettings


def test_observer_shows_faces_and_stays_bounded(agent_engine, agent_thresholds, data_dir: Path) -> None:
    pixels = cv2.imread(str(data_dir / LIN_PHOTO))
    emb = agent_engine.analyze(pixels, max_faces=1)[0]
    settings = TrackerSettings(unknown_after_frames=2, min_track_frames=1, track_timeout_s=1.0)
    tracker = FaceTracker(settings, match=lambda vector: None)
    observer = FrameObserver(recent=3, track_crops=2)
    clock, seq = 0.0, 0
    for _ in range(6):  # six appearances, each long enough to be decided unknown
        clock += 10.0  # an empty frame past the track timeout ends the track: a new one each time
        events = tracker.update([], clock, pixels)
        observer.observe("door", Frame("door", seq, pixels, time.time(), clock), [], tracker, events)
        for _frame in range(3):
            seq += 1
            clock += 0.1
            obs = Observation(emb.face.box, emb.vector, 0.9, True, 0.9, "HIGH", face=emb.face)
            events = tracker.update([obs], clock, pixels)
            observer.observe("door", Frame("door", seq, pixels, time.time(), clock), [obs], tracker, events)
    (view,) = observer.views()
    assert view.seq == seq and (view.width, view.height) == (pixels.shape[1], pixels.shape[0])
    (det,) = view.detections
    assert det.state == "unknown" and det.usable and det.quality_level == "HIGH"
    assert det.box == (emb.face.box.x1, emb.face.box.y1, emb.face.box.x2, emb.face.box.y2)
    jpeg = observer.frame_jpeg("door")
    assert (
        jpeg is not None
        and cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == pixels.shape
    )
    assert observer.frame_jpeg("door", seq) is jpeg  # encoded once per frame, whoever asks
    assert observer.frame_jpeg("elsewhere") is None

    recent = observer.recent()
    assert observer.recorded == 6 and len(recent) == 3  # the ring keeps the newest 3 decisions
    assert [r.id for r in recent] == sorted((r.id for r in recent), reverse=True)
    assert all(not r.known and r.quality_level == "HIGH" for r in recent)
    assert len(observer._cams["door"].best) <= 2  # noqa: SLF001 (the bound is the point)
    # A crop is enrollable again: the detector finds the face in it.
    assert len(agent_engine.detect(recent[0].jpeg)) == 1
    # The same face six times is one cluster at the model's pair threshold.
    (one,) = cluster(recent, ScoreMap(agent_thresholds).cosine(FAR_SCORES["1e-3"]))
    assert len(one.faces) == 3
    assert observer.discard([recent[0].id]) == 1 and len(observer.recent()) == 2


def test_an_erased_person_leaves_nothing_behind(agent_engine, data_dir: Path) -> None:
    """A track decided as a person after that person was erased (its match made before the erasure reached
    the camera loop) records no face and shows no name; other persons still do; the tombstones are bounded."""
    from agent.gallery.matcher import Candidate
    from agent.recognition.observe import ERASED_MAX

    pixels = cv2.imread(str(data_dir / LIN_PHOTO))
    emb = agent_engine.analyze(pixels, max_faces=1)[0]
    settings = TrackerSettings(unknown_after_frames=50, min_track_frames=1, track_timeout_s=1.0)
    answer: list[Candidate | None] = [None]
    tracker = FaceTracker(settings, match=lambda vector: answer[0])
    observer = FrameObserver()

    def person(outer_id: str) -> Candidate:
        return Candidate(f"p-{outer_id}", outer_id, f"info of {outer_id}", "door", f"f-{outer_id}", 0.9, 95.0)

    clock, seq = 0.0, 0

    def appearance(frames: int, between=None) -> None:  # noqa: ANN001
        nonlocal clock, seq
        clock += 10.0  # past the track timeout: a new track
        events = tracker.update([], clock)
        observer.observe("door", Frame("door", seq, pixels, time.time(), clock), [], tracker, events)
        for i in range(frames):
            if i == 1 and between is not None:
                between()
            seq += 1
            clock += 0.1
            obs = Observation(emb.face.box, emb.vector, 0.9, True, 0.9, "HIGH", face=emb.face)
            events = tracker.update([obs], clock, pixels)
            observer.observe("door", Frame("door", seq, pixels, time.time(), clock), [obs], tracker, events)

    # First frame: no match yet. Then the person is erased, and the next match (already made) names them.
    def erase_then_match() -> None:
        assert observer.forget_person("door", "erased") == 0
        answer[0] = person("erased")

    appearance(4, erase_then_match)
    assert [r.person_id for r in observer.recent()] == []
    (det,) = observer.views()[0].detections
    assert det.person_id is None and det.user_info is None and det.state != "known"
    assert not observer._cams["door"].best  # noqa: SLF001 (no crop of the erased person kept)
    # Another person is still recorded and named.
    answer[0] = person("kept")
    appearance(3)
    assert [r.person_id for r in observer.recent()] == ["kept"]
    assert observer.views()[0].detections[0].person_id == "kept"
    # The tombstones are bounded.
    for i in range(ERASED_MAX + 50):
        observer.forget_person("door", f"gone-{i}")
    assert len(observer._erased) == ERASED_MAX  # noqa: SLF001 (the bound is the point)
