"""The HIGH level's head-turn `Challenge` on real people: segments of the real videos where a person really
turns their head (found with the keypoint pose, then checked by looking at the frames: docs/liveness.md).
The matching instruction must pass, the opposite one fail, and on the mirrored video the reverse."""

from __future__ import annotations

import cv2
import pytest

from agent.gates.challenge import Challenge, ChallengeConfig
from agent.gates.pose import estimate_pose
from agent.types import Box

HAMILTON = "faces/face_recognition/examples/short_hamilton_clip.mp4"
PEDESTRIANS = "faces/facenet_pytorch/examples/video.mp4"


@pytest.fixture(scope="module")
def turns(agent_engine, data_dir, synth):
    """(name, frames of one real head turn to the subject's right). Hamilton: Lin-Manuel Miranda at the
    microphone, 2.7-4.1 s (yaw about +7 to -37 degrees); pedestrians: the man in front, 2.9-3.6 s."""
    out = []
    for video, t0, t1 in ((HAMILTON, 2.7, 4.1), (PEDESTRIANS, 2.9, 3.6)):
        track = max(synth.live_tracks(agent_engine, data_dir / video), key=len)
        out.append((video, [(f, face, t) for f, face, t in track if t0 <= t <= t1]))
    return out


# One step without an onset window or hold: the segments start mid-movement, so only the movement rule is
# checked here (timing: tests/test_challenge_steps.py, scripts/challenge_eval.py).
ONE_STEP = ChallengeConfig(steps=1, onset_min_s=0.0, onset_max_s=5.0, hold_s=0.0, timeout_s=5.0)


def _run(instruction: str, frames) -> bool | None:
    challenge = Challenge(ONE_STEP, [instruction])
    for _, face, t in frames:
        if challenge.update(face, t) is not None:
            break
    return challenge.result


def _mirrored(engine, frames):
    """The same segment flipped left-right, faces detected again (the face that overlaps the mirrored box)."""
    out = []
    for frame, face, t in frames:
        flipped = cv2.flip(frame, 1)
        w = frame.shape[1]
        box = Box(w - face.box.x2, face.box.y1, w - face.box.x1, face.box.y2)
        best = max(engine.detect(flipped), key=lambda f: f.box.iou(box))
        assert best.box.iou(box) > 0.3  # the detector is not exactly mirror-symmetric
        out.append((flipped, best, t))
    return out


def test_real_turns_are_turns(turns):
    for video, frames in turns:
        yaws = [estimate_pose(face.keypoints).yaw for _, face, _ in frames]
        assert len(frames) >= 15, video
        assert yaws[0] - min(yaws) >= 25, (video, yaws)  # a real, large turn, not keypoint jitter


def test_challenge_on_real_head_turns(agent_engine, turns):
    for video, frames in turns:
        assert _run("turn_right", frames) is True, video
        assert _run("turn_left", frames) is False, video  # the opposite direction fails
        mirrored = _mirrored(agent_engine, frames)
        assert _run("turn_right", mirrored) is not True, video  # the mirror image never passes it
        if video == HAMILTON:
            assert _run("turn_left", mirrored) is True  # mirrored, the person turns to their left
            assert _run("turn_right", mirrored) is False
        # The pedestrian's mirrored keypoints (a 100 px face in 1080p) do not mirror the pose: yaw jitters
        # between +5 and +30 and neither instruction is decided within the segment (docs/liveness.md).


@pytest.fixture(scope="module")
def replay_tracks(agent_engine, data_dir, synth):
    """Every face track of the real videos as (face, t), every second frame (a camera loop at ~12 fps),
    forward and mirrored: what an uncued replay shows the camera."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "challenge_eval.py"
    spec = importlib.util.spec_from_file_location("challenge_eval", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["challenge_eval"] = module
    spec.loader.exec_module(module)
    out = []
    for video in (HAMILTON, PEDESTRIANS):
        for i, tr in enumerate(synth.live_tracks(agent_engine, data_dir / video)):
            faces = [(face, t) for _, face, t in tr][::2]
            both = module.variants(faces, tr[0][0].shape[1])
            out += [(f"{video}#{i}/{k}", both[k]) for k in ("forward", "mirrored")]
    return module, out


def test_an_uncued_replay_rarely_passes_the_default_challenge(replay_tracks):
    """The acceptance of issue 18: at most 1% of attempts by a replay of the real videos pass the default
    challenge (docs/liveness.md has the full frame-accurate run); the 0.2 single-instruction rule on the same
    tracks passes far more often, so the measurement can tell the two apart."""
    module, tracks = replay_tracks
    new = module.measure(tracks, ChallengeConfig())
    old = module.measure(tracks, module.OLD_RULE)
    assert new["attempts"] > 2000 and new["decided"] > 1000
    assert new["passed"] / new["decided"] <= 0.01, new
    assert old["passed"] / old["decided"] >= 0.10, old
