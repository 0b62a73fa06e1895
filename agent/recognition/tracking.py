"""Per-camera face tracking: one event per appearance, decided early, improved while the face stays.

A detection continues a track when its box overlaps the track's last box (IoU) or, for a face that moved
further between two analysed frames, when its centre is close (half a face, or a whole face when the
embeddings confirm it) and its size similar; and, once the track has an embedding, only when the face also
looks like it (so a scene cut or two people crossing split tracks).
Each track keeps its `fusion_frames` best-quality embeddings; their quality-weighted mean is the track's
fused embedding.

Decisions, evaluated on every usable frame (one that passes the quality level):
- known: the frame's own embedding or the fused one matches someone at the required score or better (the
  `required` callable: it follows the stranger rate and the group's size). This can happen on the very first
  frame, so a door does not wait;
- unknown: `unknown_after_frames` usable frames went by without such a match, or the track ended after at
  least `min_track_frames` usable frames (shorter tracks are treated as detector noise);
- an unknown track that later matches is reported again as recognized (`upgrade_unknown`).
A known person is not reported again on the same camera while seen within `cooldown_s` (measured from the
last frame they were seen on, so someone standing at the door for minutes yields one event).
The known decision follows the stranger rate, which for a small group asks less than an access policy's
`min_far_level` (5 persons at 1e-3: score ~76, the policy's default level 4: 80). With
`TrackerSettings.confirm_score` (that score), a known track whose event scored below it gets one more
recognized event (same track id) the first time its match of the same person reaches it, so a door opens
once the person is seen well enough instead of never during that appearance.

Liveness (`TrackerSettings.liveness_level` other than NONE): each track owns one `TrackLiveness`, fed every
frame the track is seen on (usable or not) and dropped with the track. Every event carries the track's
liveness state at that moment. The known decision does not wait for it (a kiosk greets at once; a door's
access policy denies `liveness_missing` meanwhile), so a known track whose event went out before its
liveness passed the camera's level gets one more recognized event (same track id) the first time it passes:
the one a door opens on. That follow-up obeys the cooldown too (per person: one passing event while seen).
With a blink cue (`TrackerSettings.blink` and an `eyes` function, i.e. the face mesh), the tracker measures
eye openness on the frames the track's liveness asks for, and only while the track has not yet passed the
camera's level or the level requires a blink: the mesh costs about 2 ms per face.
With an active challenge (`TrackerSettings.challenge`, HIGH only), a known track gets one head-movement
request whose outcome joins its liveness report (agent/recognition/challenge.py); `pop_challenges` hands the
issued / decided notices to the pipeline, which publishes them for the kiosk screen.

The clock is the frame's media time for files read faster than real time (results do not depend on
machine speed) and the capture time otherwise.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from agent.errors import ConfigError, InputError
from agent.gallery.matcher import Candidate
from agent.gates.blink import BlinkConfig
from agent.gates.challenge import ChallengeConfig, with_challenge
from agent.gates.depth import DepthCheck
from agent.gates.liveness import LEVELS as LIVENESS_LEVEL_NAMES
from agent.gates.liveness import (
    LIVENESS_LEVELS,
    LivenessReport,
    LivenessThresholds,
    TrackConfig,
    TrackLiveness,
    evaluate_liveness,
)
from agent.inference.mesh import Mesh, eye_openness
from agent.recognition.challenge import (
    ActiveChallenge,
    ChallengeNotice,
    Chooser,
    TrackChallenges,
    challenge_levels,
)
from agent.types import Box, Face

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Observation:
    """One face in one frame, ready for the tracker."""

    box: Box
    vector: np.ndarray | None = field(repr=False)  # None for unusable faces (not embedded)
    weight: float  # fusion weight: quality score 0..1
    usable: bool  # passed the configured quality level
    quality: float | None = None  # gate score, None when the gate did not run
    quality_level: str | None = None
    crop: np.ndarray | None = field(default=None, repr=False)  # for snapshots
    face: Face | None = field(default=None, repr=False)  # box + keypoints, for the liveness tracker
    origin: tuple[str, int] | None = None  # files and folders: (file name, frame index) of this face's frame
    depth: DepthCheck | None = None  # cameras with a depth check: this face's depth evidence in this frame
    mesh: Mesh | None = field(default=None, repr=False)  # the blink model's mesh of this face, if run already


DEPTH_WINDOW, DEPTH_NEEDED = 3, 2  # a track's depth passes when 2 of its last 3 checks passed


@dataclass(frozen=True)
class DepthState:
    """A track's depth evidence: passed when DEPTH_NEEDED of its last DEPTH_WINDOW checks passed (one noisy
    frame neither grants nor refuses); reasons of the latest failed check otherwise."""

    passed: bool
    required: bool
    relief_mm: float | None
    reasons: tuple[str, ...]
    sensor: str = "depth"  # or "ir": the camera's liveness sensor (agent/gates/ir.py)
    level: float | None = None  # infrared: the face's IR grey level


def depth_state(
    checks, required: bool, current: DepthCheck | None, sensor: str = "depth"
) -> DepthState:
    """`checks`: the track's last checks that count (see FaceTracker._count_depth); `current`: this frame's
    own check when it counted, else None. Passing needs this frame's face itself to pass too: a decision is
    never granted on depth seen on earlier frames only."""
    checks = list(checks)
    passed = current is not None and current.passed and sum(c.passed for c in checks) >= DEPTH_NEEDED
    relief = current.relief_mm if current is not None else None
    level = current.level if current is not None else None
    if passed:
        return DepthState(True, required, relief, (), sensor, level)
    if current is not None and not current.passed:
        return DepthState(False, required, relief, current.reasons, sensor, level)
    failed = next((c for c in reversed(checks) if not c.passed), None)
    reasons = failed.reasons if failed is not None else (f"{sensor}_missing",)
    return DepthState(False, required, relief, reasons, sensor, level)


@dataclass(frozen=True)
class LivenessState:
    """A track's liveness evidence at one moment. `score` and `level` are None until the first report."""

    score: float | None  # 0 spoof .. 1 live
    level: str | None  # strongest level the report passes; "NONE" when it passes none
    reasons: tuple[str, ...]  # why it fails the camera's required level; empty = passed
    challenge: str | None = None  # the track's challenge: "pending" or its outcome; None: none issued

    @property
    def passed(self) -> bool:
        return not self.reasons


STRONGEST_FIRST = ("HIGH", "NORMAL", "LOW")


def liveness_uses_blinks(level: str) -> bool:
    """Does the camera loop need the face mesh at this level (a blink counts or is required)?"""
    return level != "NONE" and LIVENESS_LEVELS[level].uses_blinks


def liveness_requires_blink(level: str) -> bool:
    return level != "NONE" and LIVENESS_LEVELS[level].require_blink


def liveness_state(
    report: LivenessReport | None,
    required: str,
    levels: dict[str, LivenessThresholds] | None = None,
    challenge: str | None = None,
) -> LivenessState:
    """Judge a track's latest report: the strongest level passed, and the verdict at `required`."""
    verdict = evaluate_liveness(report, required, levels)
    if report is None:
        return LivenessState(None, None, verdict.reasons, challenge)
    level = next((lv for lv in STRONGEST_FIRST if evaluate_liveness(report, lv, levels).passed), "NONE")
    return LivenessState(float(min(max(report.score, 0.0), 1.0)), level, verdict.reasons, challenge)


@dataclass(frozen=True)
class TrackEvent:
    """A decision the pipeline turns into a RecognitionEvent."""

    track_id: int
    known: bool
    candidate: Candidate | None  # the match, or for an unknown face the best rejected candidate
    observation: Observation  # best-quality observation of the track so far
    clock: float
    upgrade: bool = False
    liveness: LivenessState | None = None  # None: liveness is off on this camera
    liveness_update: bool = False  # the follow-up of a known track whose liveness, depth or score now passes
    depth: DepthState | None = None  # None: no depth check on this camera


@dataclass(frozen=True)
class TrackerSettings:
    min_score: float = 80.0
    iou_threshold: float = 0.3
    track_timeout_s: float = 1.0
    max_missed_frames: int = 15
    unknown_after_frames: int = 8
    min_track_frames: int = 3
    fusion_frames: int = 5
    upgrade_unknown: bool = True
    cooldown_s: float = 10.0
    max_tracks: int = 64
    min_similarity: float = 0.35  # a face this unlike a track's fused embedding starts a new track
    liveness_level: str = "NONE"  # NONE: no liveness tracking; else the level a follow-up event needs
    liveness: TrackConfig = field(default_factory=TrackConfig)
    blink: BlinkConfig | None = None  # None: no blink cue on this camera (its level does not use blinks)
    challenge: ChallengeConfig | None = None  # None: no active challenge (only HIGH may have one)
    depth: bool = False  # the camera checks depth or infrared (observations carry DepthCheck)
    depth_required: bool = False  # ... and access needs it: a known track gets a follow-up once it passes
    sensor: str = "depth"  # which: "depth" or "ir"
    # The score the access policy needs (its min_far_level): a known track whose event scored below it gets
    # one follow-up when its match reaches it, so a door opens once the person is seen well enough. None: off.
    confirm_score: float | None = None

    def __post_init__(self) -> None:
        if self.liveness_level not in LIVENESS_LEVEL_NAMES:
            raise InputError(f"unknown liveness level {self.liveness_level!r}", code="invalid_liveness_level")
        if self.challenge is not None and self.liveness_level != "HIGH":
            raise ConfigError(
                f"a liveness challenge needs liveness level HIGH, not {self.liveness_level}",
                code="invalid_challenge_level",
            )


Matcher = Callable[[np.ndarray], Candidate | None]
EyeMeter = Callable[[np.ndarray, Face], float | None]  # eye openness of a face (None: eyes not seen)


class Track:
    def __init__(
        self, track_id: int, obs: Observation, clock: float, liveness: TrackLiveness | None = None
    ) -> None:
        self.id = track_id
        self.box = obs.box
        self.last_seen = clock
        self.missed = 0
        self.hits = 0
        self.usable = 0
        self.state = "pending"  # pending -> known | unknown; unknown -> known on upgrade
        self.person: str | None = None
        self.best: Observation = obs
        self.best_score: float | None = None
        self.candidate: Candidate | None = None  # the match that made the track known
        self.liveness = liveness  # owned here: freed with the track
        self.live: LivenessState | None = None
        self.live_reported = False  # an event of this track carried a passing liveness verdict
        self.challenge: ActiveChallenge | None = None  # at most one per track, never re-issued
        self.depth_checks: deque[DepthCheck] = deque(maxlen=DEPTH_WINDOW)
        self.depth_current: DepthCheck | None = None  # this frame's check, when it counted
        self.depth_reported = False  # an event of this track carried passed depth evidence
        self.confirmed = False  # the score follow-up was sent (at most one per track)
        self._top: list[Observation] = []

    def add(self, obs: Observation, clock: float, keep: int) -> None:
        self.box, self.last_seen, self.missed = obs.box, clock, 0
        self.hits += 1
        if (obs.usable, obs.weight) >= (self.best.usable, self.best.weight):
            self.best = obs
        if obs.usable:
            self.usable += 1
            self._top = sorted([*self._top, obs], key=lambda o: -o.weight)[:keep]

    @property
    def fused_count(self) -> int:
        return len(self._top)

    def fused(self) -> np.ndarray | None:
        """Quality-weighted mean of the best usable embeddings, L2-normalised; None before any."""
        if not self._top:
            return None
        weights = np.asarray([max(o.weight, 1e-3) for o in self._top], dtype=np.float32)
        mean = (weights[:, None] * np.stack([o.vector for o in self._top])).sum(axis=0)
        norm = float(np.linalg.norm(mean))
        return (mean / norm).astype(np.float32) if norm > 0 else None


def _center_close(a: Box, b: Box, reach: float) -> bool:
    """Centres within `reach` face sizes of each other, sizes within 25 %."""
    (ax, ay), (bx, by) = a.center, b.center
    size_a, size_b = max(a.width, a.height), max(b.width, b.height)
    if size_a <= 0 or size_b <= 0 or not 0.8 <= size_a / size_b <= 1.25:
        return False
    return ((ax - bx) ** 2 + (ay - by) ** 2) ** 0.5 <= reach * max(size_a, size_b)


class FaceTracker:
    """Tracks of one camera. Used by one recognition thread at a time (cameras are not shared)."""

    def __init__(
        self,
        settings: TrackerSettings,
        match: Matcher,
        eyes: EyeMeter | None = None,
        choose: Chooser | None = None,
        required: Callable[[], float] | None = None,
    ) -> None:
        """`choose` forces the challenge instructions (tests); None: each is drawn with `secrets`.
        `required` gives the score a match needs at this moment (it follows the group's size, see
        agent/gallery/thresholds.py); None: the fixed `settings.min_score`."""
        self.s = settings
        self._required = required or (lambda: settings.min_score)
        self._challenges = (
            TrackChallenges(settings.challenge, settings.max_tracks, choose) if settings.challenge else None
        )
        self._levels = challenge_levels() if self._challenges is not None else LIVENESS_LEVELS
        self._match = match
        self._eyes = eyes if settings.blink is not None else None
        self._require_blink = liveness_requires_blink(settings.liveness_level)
        self._tracks: list[Track] = []
        self._next_id = 1
        self._person_seen: dict[str, float] = {}  # person -> clock they were last seen (cooldown)
        self._person_live: dict[str, float] = {}  # person -> clock last seen after a passing liveness event
        self._person_depth: dict[str, float] = {}  # person -> clock of their last event with passed depth
        self.last_clock: float | None = None
        self.liveness_seconds = 0.0  # time spent in liveness during the last update (for the latency log)
        self.counters = {
            "tracks": 0,
            "known": 0,
            "unknown": 0,
            "upgrades": 0,
            "cooldown": 0,
            "evicted": 0,
            "liveness_updates": 0,
            "score_updates": 0,
            "depth_updates": 0,
            "liveness_errors": 0,
            "eye_samples": 0,
        }
        if self._challenges is not None:
            self.counters.update(self._challenges.counters)

    @property
    def active(self) -> int:
        return len(self._tracks)

    @property
    def liveness_on(self) -> bool:
        return self.s.liveness_level != "NONE"

    def pop_challenges(self) -> list[ChallengeNotice]:
        """Challenge notices since the last call, in order (none without a challenge on this camera)."""
        if self._challenges is None:
            return []
        self.counters.update(self._challenges.counters)
        return self._challenges.drain()

    def liveness_states(self) -> dict[int, LivenessState | None]:
        """Track id -> its current liveness state (None with liveness off), for stats and tests."""
        return {t.id: t.live for t in self._tracks}

    def update(
        self, observations: list[Observation], clock: float, pixels: np.ndarray | None = None
    ) -> list[TrackEvent]:
        """Feed one analysed frame's faces; returns the events it decides (possibly none). `pixels` (the
        frame the boxes refer to) feeds the tracks' liveness; without it liveness learns nothing."""
        self.last_clock = clock
        self.liveness_seconds = 0.0
        events: list[TrackEvent] = []
        assigned = self._associate(observations)
        for obs, track in zip(observations, assigned, strict=True):
            if track is None:
                track = self._new_track(obs, clock)
            track.add(obs, clock, self.s.fusion_frames)
            self._count_depth(track, obs)
            if pixels is not None and obs.face is not None and track.liveness is not None:
                self._feed_liveness(track, pixels, obs.face, clock, obs.mesh)
            event = self._decide(track, obs, clock) if obs.usable else None
            if event is None:
                event = self._liveness_followup(track, clock) or self._depth_followup(track, clock)
            if event is not None:
                events.append(event)
        seen = {id(t) for t in assigned if t is not None}
        for track in self._tracks:
            if id(track) not in seen and track.last_seen != clock:
                track.missed += 1
        events.extend(self._expire(clock))
        return events

    def flush(self, clock: float) -> list[TrackEvent]:
        """End every track (the source finished): pending ones long enough become unknown."""
        events = [e for t in self._tracks if (e := self._end(t, clock)) is not None]
        for track in self._tracks:
            self._close_challenge(track, clock)
        self._tracks = []
        return events

    # -- association -----------------------------------------------------------------------------------------

    def _associate(self, observations: list[Observation]) -> list[Track | None]:
        pairs: list[tuple[float, int, int]] = []
        fused = [t.fused() for t in self._tracks]
        for i, obs in enumerate(observations):
            for j, track in enumerate(self._tracks):
                vec = fused[j]
                looks_alike = obs.vector is not None and vec is not None
                if looks_alike and float(obs.vector @ vec) < self.s.min_similarity:
                    continue  # another face took this place (a scene cut, people crossing)
                iou = obs.box.iou(track.box)
                if iou >= self.s.iou_threshold:
                    pairs.append((iou + 1.0, i, j))  # overlap beats mere proximity
                elif _center_close(obs.box, track.box, 1.0 if looks_alike else 0.5):
                    pairs.append((iou, i, j))  # moved further; the embedding confirms it is the same face
        out: list[Track | None] = [None] * len(observations)
        used: set[int] = set()
        for _, i, j in sorted(pairs, reverse=True):
            if out[i] is None and j not in used:
                out[i] = self._tracks[j]
                used.add(j)
        return out

    def _new_track(self, obs: Observation, clock: float) -> Track:
        if len(self._tracks) >= self.s.max_tracks:
            self._tracks.sort(key=lambda t: t.last_seen)
            self._close_challenge(self._tracks.pop(0), clock)
            self.counters["evicted"] += 1
        liveness = self._track_liveness() if self.liveness_on else None
        track = Track(self._next_id, obs, clock, liveness)
        if liveness is not None:
            track.live = liveness_state(None, self.s.liveness_level)
        self._next_id += 1
        self._tracks.append(track)
        self.counters["tracks"] += 1
        return track

    # -- decisions -------------------------------------------------------------------------------------------

    def _best_candidate(self, track: Track, obs: Observation) -> Candidate | None:
        assert obs.vector is not None  # usable observations are embedded
        cands = [self._match(obs.vector)]
        fused = track.fused() if track.fused_count >= 2 else None
        if fused is not None:
            cands.append(self._match(fused))
        found = [c for c in cands if c is not None]
        return max(found, key=lambda c: c.score) if found else None

    # -- liveness ------------------------------------------------------------------------------------------

    def _track_liveness(self) -> TrackLiveness:
        return TrackLiveness(self.s.liveness, blink=self.s.blink if self._eyes is not None else None)

    def _feed_liveness(
        self, track: Track, pixels: np.ndarray, face: Face, clock: float, mesh: Mesh | None = None
    ) -> None:
        assert track.liveness is not None
        t0 = time.perf_counter()
        try:
            openness = None
            # The mesh runs only while its answer can still matter for this track (see module doc).
            needed = self._require_blink or track.live is None or not track.live.passed
            if self._eyes is not None and needed and track.liveness.wants_eyes(face, clock):
                # The embedder's alignment already ran the same mesh on this face: the same answer, read.
                openness = self._eyes(pixels, face) if mesh is None else self._openness(mesh)
                self.counters["eye_samples"] += 1
            report = track.liveness.update(pixels, face, clock, openness)
        except InputError as exc:  # e.g. the clock went back (a looped file): start the evidence afresh
            self.counters["liveness_errors"] += 1
            log.debug("track %d: liveness restarted: %s", track.id, exc)
            track.liveness = self._track_liveness()
            report = None
        challenge = None
        if track.challenge is not None and self._challenges is not None:
            self._challenges.feed(track.challenge, face, clock)
            challenge = track.challenge.state
            if report is not None:
                report = with_challenge(report, track.challenge.challenge.result)
        track.live = liveness_state(report, self.s.liveness_level, self._levels, challenge)
        self.liveness_seconds += time.perf_counter() - t0

    def _openness(self, mesh: Mesh) -> float | None:
        """Eye openness from a mesh already run on the face, as the eye meter computes it (None: the mesh
        does not see a face)."""
        blink = self.s.blink or BlinkConfig()
        return None if mesh.face_probability < blink.min_face_probability else eye_openness(mesh.points)

    def _liveness_followup(self, track: Track, clock: float) -> TrackEvent | None:
        """The recognized event a door opens on, once a known track's liveness passes (see module doc)."""
        live = track.live
        if track.state != "known" or track.live_reported or live is None or not live.passed:
            return None
        if track.person is None or track.candidate is None:
            return None
        track.live_reported = True
        last = self._person_live.get(track.person)
        self._person_live[track.person] = clock
        if last is not None and last <= clock < last + self.s.cooldown_s:
            self.counters["cooldown"] += 1
            return None
        self.counters["liveness_updates"] += 1
        return self._event(track, True, track.candidate, clock, liveness_update=True)

    def _event(self, track: Track, known: bool, cand: Candidate | None, clock: float, **flags) -> TrackEvent:
        if known and track.live is not None and track.live.passed and track.person is not None:
            track.live_reported = True
            self._person_live[track.person] = clock
        depth = (
            depth_state(track.depth_checks, self.s.depth_required, track.depth_current, self.s.sensor)
            if self.s.depth
            else None
        )
        if known and depth is not None and depth.passed:
            track.depth_reported = True
            if track.person is not None:
                self._person_depth[track.person] = clock
        return TrackEvent(track.id, known, cand, track.best, clock, liveness=track.live, depth=depth, **flags)

    def _count_depth(self, track: Track, obs: Observation) -> None:
        """Depth evidence counts only for a face that is the track's face: embedded (usable) and like the
        track's fused embedding at the look-alike gate. An unembedded face joins a track by its box alone,
        so its relief could be anybody's (a real face swapped in where a print was recognized)."""
        track.depth_current = None
        if obs.depth is None or not obs.usable or obs.vector is None:
            return
        fused = track.fused()
        if fused is not None and float(obs.vector @ fused) < self.s.min_similarity:
            return
        track.depth_checks.append(obs.depth)
        track.depth_current = obs.depth

    def _depth_followup(self, track: Track, clock: float) -> TrackEvent | None:
        """A known track whose events so far lacked the depth evidence the camera requires, now that it
        passes (and liveness too, when the camera checks it): the event a door opens on."""
        if not self.s.depth_required or track.state != "known" or track.depth_reported:
            return None
        if track.candidate is None or not depth_state(track.depth_checks, True, track.depth_current).passed:
            return None
        if track.live is not None and not track.live.passed:
            return None  # the liveness follow-up will carry the depth evidence when liveness passes
        track.depth_reported = True
        last = self._person_depth.get(track.person) if track.person is not None else None
        if last is not None and last <= clock < last + self.s.cooldown_s:
            self.counters["cooldown"] += 1
            return None  # this person was let in with depth evidence moments ago
        self.counters["depth_updates"] += 1
        return self._event(track, True, track.candidate, clock, liveness_update=True)

    # -- decisions (continued) ---------------------------------------------------------------------------

    def _decide(self, track: Track, obs: Observation, clock: float) -> TrackEvent | None:
        if track.state == "known":
            if track.person is not None:
                self._person_seen[track.person] = clock
                if track.live_reported:
                    self._person_live[track.person] = clock
            return self._score_followup(track, obs, clock)
        if track.state == "unknown" and not self.s.upgrade_unknown:
            return None
        cand = self._best_candidate(track, obs)
        if cand is not None and (track.best_score is None or cand.score > track.best_score):
            track.best_score = cand.score
        if cand is not None and cand.score >= self._required():
            return self._known(track, cand, clock, obs.face)
        if track.state == "pending" and track.usable >= self.s.unknown_after_frames:
            return self._unknown(track, cand, clock)
        return None

    def _score_followup(self, track: Track, obs: Observation, clock: float) -> TrackEvent | None:
        """A known track whose event's score was below the access policy's bar, now matching the same person
        at or above it: one more event of the same appearance (no cooldown: it is the same track)."""
        bar = self.s.confirm_score
        if bar is None or track.confirmed or track.candidate is None or track.candidate.score >= bar:
            return None
        cand = self._best_candidate(track, obs)
        if cand is None or cand.person_id != track.person or cand.score < bar:
            return None
        track.confirmed, track.candidate = True, cand
        self.counters["score_updates"] += 1
        return self._event(track, True, cand, clock, liveness_update=True)

    def _known(
        self, track: Track, cand: Candidate, clock: float, face: Face | None = None
    ) -> TrackEvent | None:
        upgrade = track.state == "unknown"
        track.state, track.person, track.candidate = "known", cand.person_id, cand
        self._issue_challenge(track, cand, clock, face)
        last = self._person_seen.get(cand.person_id)
        self._person_seen[cand.person_id] = clock
        if last is not None and last <= clock < last + self.s.cooldown_s:
            self.counters["cooldown"] += 1
            track.confirmed = True  # an appearance the cooldown kept quiet gets no score follow-up either
            return None
        self.counters["upgrades" if upgrade else "known"] += 1
        return self._event(track, True, cand, clock, upgrade=upgrade)

    def _issue_challenge(self, track: Track, cand: Candidate, clock: float, face: Face | None = None) -> None:
        """The challenge of a track just decided known (see agent/recognition/challenge.py for why then)."""
        if self._challenges is None or track.challenge is not None or track.live_reported:
            return
        track.challenge = self._challenges.issue(track.id, clock, cand.outer_id, face)
        if track.live is not None:  # this decision's event already says a challenge is pending
            track.live = replace(track.live, challenge=track.challenge.state)

    def _close_challenge(self, track: Track, clock: float) -> None:
        if self._challenges is not None and track.challenge is not None:
            self._challenges.close(track.challenge, clock)

    def _unknown(self, track: Track, cand: Candidate | None, clock: float) -> TrackEvent:
        track.state = "unknown"
        self.counters["unknown"] += 1
        return self._event(track, False, cand, clock)

    def _end(self, track: Track, clock: float) -> TrackEvent | None:
        if track.state == "pending" and track.usable >= self.s.min_track_frames:
            return self._unknown(track, self._best_candidate_fused(track), clock)
        return None

    def _best_candidate_fused(self, track: Track) -> Candidate | None:
        vector = track.fused()
        return self._match(vector) if vector is not None else None

    def _expire(self, clock: float) -> list[TrackEvent]:
        events: list[TrackEvent] = []
        keep: list[Track] = []
        for track in self._tracks:
            gone = track.missed > self.s.max_missed_frames or clock - track.last_seen > self.s.track_timeout_s
            if gone:
                self._close_challenge(track, clock)
                event = self._end(track, clock)
                if event is not None:
                    events.append(event)
            else:
                keep.append(track)
        self._tracks = keep
        horizon = clock - self.s.cooldown_s
        for seen in (self._person_seen, self._person_live, self._person_depth):
            for person in [p for p, t in seen.items() if t < horizon or t > clock]:
                del seen[person]  # bounded: only persons seen within the cooldown stay
        return events
