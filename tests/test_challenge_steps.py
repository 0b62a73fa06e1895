"""The multi-step challenge's timing rules on synthetic poses (the keypoints of the pose module's 3D face
model, so the angles are exact): onset window counted from the moment each step is shown, the hold, the
alternating axes, the notices a kiosk gets per step, and the config's consistency checks. The rate at which
real recordings pass by chance is measured by scripts/challenge_eval.py (docs/liveness.md)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from agent.config import AgentConfig, parse_model
from agent.errors import ConfigError
from agent.gates.challenge import CHALLENGES, Challenge, ChallengeConfig, draw_instructions
from agent.gates.pose import FACE_MODEL_3D
from agent.publish.challenge import ChallengeMessage, challenge_payload
from agent.recognition.challenge import TrackChallenges
from agent.types import Box, Face

FPS = 25.0


def face(yaw: float = 0.0, pitch: float = 0.0) -> Face:
    a, b = math.radians(-yaw), math.radians(-pitch)
    ry = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    pts = (FACE_MODEL_3D @ (rx @ ry).T)[:, :2] + 200.0
    return Face(Box(150, 150, 250, 250), 0.9, pts.astype(np.float32))


def response(
    axis: str,
    sign: float,
    start: float,
    t0: float,
    *,
    delay: float,
    ramp: float = 0.4,
    peak: float = 25.0,
    hold: float = 0.6,
) -> list[tuple[float, Face]]:
    """Frames of one response from `start`: still until t0 + delay, then a ramp to `peak` degrees, held."""
    out = []
    t = start
    end = t0 + delay + ramp + hold
    while t <= end + 1e-9:
        x = min(max((t - t0 - delay) / ramp, 0.0), 1.0) * peak * sign
        out.append((t, face(yaw=x) if axis == "yaw" else face(pitch=x)))
        t += 1 / FPS
    return out


def follow(ch: Challenge, delay: float, t: float = 0.0) -> float:
    """A cooperative person: each step answered `delay` s after it was shown; returns the time it ended."""
    while ch.result is None:
        axis, sign, _ = CHALLENGES[ch.instruction]
        shown = ch.step_shown_at if ch.step_shown_at is not None else t
        step = ch.step
        for tf, f in response(axis, sign, t, shown, delay=delay):
            t = tf
            ch.update(f, t)
            if ch.result is not None or ch.step != step:
                break
        else:
            ch.update(face(), t + 5.0)  # nothing more happened: let the deadline decide
        t += 1 / FPS
        # the pose returns to centre between steps: the next step's baseline is wherever the head is
    return t


def test_a_cooperative_person_passes_three_steps():
    ch = Challenge(ChallengeConfig(), ["turn_left", "look_up", "turn_right"], issued_at=0.0)
    follow(ch, delay=0.5)
    assert ch.outcome == "passed" and ch.step == 2 and ch.reason is None


def test_a_response_before_anyone_could_read_the_instruction_fails_early():
    ch = Challenge(ChallengeConfig(), ["turn_left", "look_up", "turn_right"], issued_at=0.0)
    follow(ch, delay=0.05)  # already moving when the instruction appeared: a recording
    assert ch.outcome == "failed" and ch.reason == "early" and ch.step == 0


def test_no_response_within_the_onset_window_times_out_late():
    cfg = ChallengeConfig()
    ch = Challenge(cfg, ["look_down", "turn_left", "look_up"], issued_at=0.0)
    follow(ch, delay=cfg.onset_max_s + 0.3)
    assert ch.outcome == "timed_out" and ch.reason == "late"


def test_the_second_step_is_timed_from_when_it_was_shown():
    """The first step is followed; the second is answered early relative to its own display time (what a
    recording that keeps moving does), so it fails at step 2."""
    cfg = ChallengeConfig()
    ch = Challenge(cfg, ["turn_left", "look_down", "turn_right"], issued_at=0.0)
    t = 0.0
    for t, f in response("yaw", 1.0, 0.0, 0.0, delay=0.5):
        ch.update(f, t)
        if ch.step == 1:
            break
    assert ch.step == 1 and ch.result is None and ch.step_shown_at == pytest.approx(t)
    # Looking down starts 1 frame after the second instruction appeared: 6 degrees by 0.16 s < onset_min_s
    for t2, f in response("pitch", -1.0, t + 1 / FPS, t, delay=0.04):
        if ch.update(f, t2) is not None:
            break
    assert ch.outcome == "failed" and ch.reason == "early" and ch.step == 1


def test_the_movement_must_be_held():
    cfg = ChallengeConfig(steps=1, hold_s=0.3)
    ch = Challenge(cfg, ["turn_right"], issued_at=0.0)
    frames = [(0.0, 0), (0.3, -8), (0.5, -20), (0.6, -10), (0.7, -20), (0.9, -20)]
    assert [ch.update(face(yaw=y), t) for t, y in frames] == [None] * 6  # dropped back at 0.6 s: held 0.2 s
    assert ch.update(face(yaw=-21), 1.0) is True  # 0.7 .. 1.0 s at >= 15 degrees


def test_wrong_direction_fails_at_once():
    ch = Challenge(ChallengeConfig(), ["look_up", "turn_left", "look_down"], issued_at=0.0)
    assert [ch.update(face(pitch=p), t) for t, p in ((0.0, 0), (0.5, -5), (0.7, -16))] == [None, None, False]
    assert ch.reason == "wrong_direction"


def test_instructions_alternate_axes_and_cover_every_sequence():
    seen = Counter(draw_instructions(3) for _ in range(3000))
    for seq in seen:
        axes = [CHALLENGES[i][0] for i in seq]
        assert axes[0] != axes[1] and axes[1] != axes[2], seq
    assert len(seen) == 16  # 4 x 2 x 2: all of them drawn
    assert draw_instructions(2, choose=lambda: "turn_left") == ("turn_left", "turn_left")


def test_config_windows_are_consistent():
    for bad in (
        {"onset_min_s": 1.0, "onset_max_s": 0.5},
        {"onset_max_s": 5.0, "timeout_s": 4.0},
        {"onset_change": 15.0},
        {"steps": 0},
        {"steps": 6},
    ):
        with pytest.raises(ConfigError):
            parse_model(
                AgentConfig,
                {
                    "recognition": {"liveness_level": "HIGH"},
                    "cameras": [{"id": "k", "liveness_challenge": bad}],
                },
            )


def test_every_step_is_a_notice_and_a_message():
    cfg = ChallengeConfig()
    order = iter(["turn_left", "look_up", "turn_right"])
    ch = TrackChallenges(cfg, max_tracks=4, choose=lambda: next(order))
    active = ch.issue(7, 0.0, "alice")
    follow_frames = []
    t = 0.0
    while active.challenge.result is None and t < 20:
        c = active.challenge
        axis, sign, _ = CHALLENGES[c.instruction]
        step = c.step
        for tf, f in response(axis, sign, t, c.step_shown_at, delay=0.5):
            t = tf
            ch.feed(active, f, t)
            follow_frames.append(t)
            if c.result is not None or c.step != step:
                break
        t += 1 / FPS
    notices = ch.drain()
    assert [(n.state, n.step, n.instruction) for n in notices] == [
        ("issued", 1, "turn_left"),
        ("issued", 2, "look_up"),
        ("issued", 3, "turn_right"),
        ("passed", 3, "turn_right"),
    ]
    assert all(n.steps == 3 for n in notices)
    assert notices[1].issued_clock > notices[0].issued_clock and notices[1].deadline_clock == pytest.approx(
        notices[1].issued_clock + cfg.timeout_s
    )
    msg = ChallengeMessage(
        "k",
        7,
        active.challenge_id,
        notices[1].instruction,
        notices[1].text,
        "issued",
        1e9,
        1e9 + 4,
        1e9,
        "alice",
        step=2,
        steps=3,
    )
    body = challenge_payload(msg, "dev")
    assert (body["step"], body["steps"], body["reason"], body["instruction"]) == (2, 3, None, "look_up")
    with pytest.raises(Exception, match="step"):
        ChallengeMessage(
            "k", 7, "x", "look_up", CHALLENGES["look_up"][2], "issued", 1e9, 1e9, 1e9, step=4, steps=3
        )


def test_the_session_script_runs_on_a_real_video(data_dir, tmp_path):
    """scripts/challenge_session.py end to end on a file (a camera is not available here): a recording does
    not follow the instruction, so its attempt must not pass; the record and summary are written."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    video = data_dir / "faces/face_recognition/examples/short_hamilton_clip.mp4"
    out = tmp_path / "summary.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(root / "scripts/challenge_session.py"),
            "--source",
            str(video),
            "--attempts",
            "1",
            "--no-display",
            "--record",
            str(tmp_path / "rec"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(out.read_text())
    assert summary["attempts"] == 1 and summary["passed"] == 0, summary
    assert summary["detail"][0]["outcome"] in ("failed", "timed_out", "abandoned")
    frames = json.loads((tmp_path / "rec/session.json").read_text())["frames"]
    assert (tmp_path / "rec/session.mp4").stat().st_size > 0 and len(frames) > 25
    assert any(f["text"] == "look at the camera" for f in frames)
    assert any(f["text"] not in ("", "look at the camera") for f in frames)  # an instruction was shown


def test_a_gap_in_the_frames_does_not_hide_an_early_or_late_start():
    cfg = ChallengeConfig(steps=1)
    # Hidden until 0.25 s, then already turned 20 degrees: the onset, interpolated from the start pose shown
    # at 0 s, was at ~0.075 s: early.
    hidden = Challenge(cfg, ["turn_left"], issued_at=0.0, start_face=face())
    assert hidden.update(face(yaw=20), 0.25) is False and hidden.reason == "early"
    # Seen still at 1.9 s, turned 20 degrees at 2.3 s: the onset (~2.02 s) is after onset_max_s 2.0: late.
    slow = Challenge(cfg, ["turn_left"], issued_at=0.0, start_face=face())
    assert slow.update(face(yaw=1), 1.9) is None
    assert slow.update(face(yaw=20), 2.3) is False and slow.reason == "late"
    # A longer gap than max_gap_s before the onset frame: its timing cannot be checked.
    blind = Challenge(cfg, ["turn_left"], issued_at=0.0, start_face=face())
    assert blind.update(face(yaw=1), 0.3) is None
    assert blind.update(face(yaw=20), 1.2) is False and blind.reason == "no_view"
    # No start pose and the first frame later than max_gap_s after the instruction: no_view as well.
    late_view = Challenge(cfg, ["turn_left"], issued_at=0.0)
    assert late_view.update(face(), 0.8) is False and late_view.reason == "no_view"
    # A person who starts at 0.5 s and is seen every 0.2 s still passes.
    ok = Challenge(cfg, ["turn_left"], issued_at=0.0, start_face=face())
    frames = [(0.2, 0), (0.4, 0), (0.6, 8), (0.8, 18), (1.0, 20), (1.2, 21)]
    assert [ok.update(face(yaw=y), t) for t, y in frames][-1] is True


def test_replays_at_once_do_not_get_more_tries_than_one_after_the_other():
    cfg = ChallengeConfig(steps=1, max_failures=3, lockout_s=300.0)
    ch = TrackChallenges(cfg, max_tracks=16, choose=lambda: "turn_left")
    tries = [ch.issue(i, 0.0, "mallory", face()) for i in range(6)]  # six phones at once
    assert [a.state for a in tries] == ["pending"] * 3 + ["locked"] * 3
    for a in tries[:3]:
        ch.close(a, 1.0)  # abandoned: failures
    assert ch.issue(9, 2.0, "mallory", face()).state == "locked"
    assert ch.issue(10, 2.0, "alice", face()).state == "pending"  # nobody else is affected
    passer = TrackChallenges(cfg, max_tracks=16, choose=lambda: "turn_left")
    first = passer.issue(1, 0.0, "bob", face())
    passer.feed(first, face(yaw=0.0), 0.1)
    for t in (0.5, 0.6, 0.7, 0.8, 0.9):
        passer.feed(first, face(yaw=20.0), t)
    assert first.state == "passed"
    assert [passer.issue(i, 1.0, "bob", face()).state for i in range(2, 5)] == ["pending"] * 3  # freed
