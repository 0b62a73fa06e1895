"""The score follow-up (TrackerSettings.confirm_score): a track named below the access policy's FAR level
gets one more event, on the same track, when its match of the same person reaches it; never otherwise.
A real tracker fed the real engine's embedding of a real photo; the match scores are scripted per frame
(the gallery's scores are what this rule reacts to, not what it computes)."""

from __future__ import annotations

from pathlib import Path

import cv2
from console_support import LIN_PHOTO

from agent.gallery.matcher import Candidate
from agent.recognition.pipeline import confirm_score
from agent.recognition.tracking import FaceTracker, Observation, TrackerSettings


def _cand(score: float, person: str = "lin") -> Candidate:
    return Candidate(person, person, "", "door", "f1", 0.9, score)


def _events(scores: list[tuple[float, str]], bar: float | None, agent_engine, data_dir: Path) -> list:
    pixels = cv2.imread(str(data_dir / LIN_PHOTO))
    emb = agent_engine.analyze(pixels, max_faces=1)[0]
    answer = [None]
    settings = TrackerSettings(unknown_after_frames=50, min_track_frames=1, cooldown_s=30, confirm_score=bar)
    tracker = FaceTracker(settings, match=lambda vector: answer[0], required=lambda: 76.0)
    out = []
    for k, (score, person) in enumerate(scores):
        answer[0] = _cand(score, person)
        obs = Observation(emb.face.box, emb.vector, 0.9, True, face=emb.face)
        out += [(k, e.candidate.score, e.liveness_update, e.track_id) for e in tracker.update([obs], k * 0.1)]
    return out, tracker.counters


def test_a_track_named_below_the_bar_gets_one_followup_when_it_reaches_it(agent_engine, data_dir) -> None:
    frames = [(77, "lin"), (79, "lin"), (83, "alex"), (82, "lin"), (90, "lin"), (95, "lin")]
    events, counters = _events(frames, 80.0, agent_engine, data_dir)
    # named at 77 (the stranger rule's 76), nothing at 79, nothing for another person's 83, then one
    # follow-up at 82 on the same track, and no more however high it goes
    assert [(k, s, up) for k, s, up, _t in events] == [(0, 77, False), (3, 82, True)]
    assert len({t for *_x, t in events}) == 1 and counters["score_updates"] == 1


def test_no_followup_without_a_bar_or_when_named_above_it(agent_engine, data_dir) -> None:
    frames = [(77, "lin"), (85, "lin"), (90, "lin")]
    assert [e[:3] for e in _events(frames, None, agent_engine, data_dir)[0]] == [(0, 77, False)]
    frames = [(81, "lin"), (90, "lin")]
    assert [e[:3] for e in _events(frames, 80.0, agent_engine, data_dir)[0]] == [(0, 81, False)]


def test_an_appearance_kept_quiet_by_the_cooldown_gets_no_followup(agent_engine, data_dir) -> None:
    """Seen again within the cooldown on a new track (the face left the frame): no event at 77, and none
    later at 85 either: the follow-up is a second event of a reported appearance, not a way round the
    cooldown."""
    pixels = cv2.imread(str(data_dir / LIN_PHOTO))
    emb = agent_engine.analyze(pixels, max_faces=1)[0]
    answer = [None]
    settings = TrackerSettings(
        unknown_after_frames=50, min_track_frames=1, cooldown_s=30, confirm_score=80.0, track_timeout_s=0.5
    )
    tracker = FaceTracker(settings, match=lambda vector: answer[0], required=lambda: 76.0)
    obs = Observation(emb.face.box, emb.vector, 0.9, True, face=emb.face)
    events = []
    for clock, score in ((0.0, 85), (0.1, 85), (2.0, None), (5.0, 77), (5.1, 85), (5.2, 90)):
        answer[0] = None if score is None else _cand(score)
        seen = [] if score is None else [obs]  # at 2.0 nobody: the first track ends
        events += [(clock, e.candidate.score, e.track_id) for e in tracker.update(seen, clock) if e.known]
    assert [(c, s) for c, s, _t in events] == [(0.0, 85)], events
    assert tracker.counters["cooldown"] == 1 and tracker.counters["score_updates"] == 0


def test_confirm_score_is_the_policy_level_anchor() -> None:
    anchors = {"1e-3": 70.0, "1e-4": 80.0, "1e-5": 90.0, "1e-6": 95.0}
    assert confirm_score(0, anchors) is None
    assert confirm_score(4, anchors) == 80.0 and confirm_score(3, anchors) == 70.0
    assert confirm_score(2, anchors) == 70.0  # below the anchors: the least strict one, never less
    assert confirm_score(7, anchors) is None  # beyond them no score reaches the level
