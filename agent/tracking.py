"""Per-camera face tracking: one event per appearance, decided early, improved while the face stays.

A detection continues a track when its box overlaps the track's last box (IoU) or, for a face that moved
further between two analysed frames, when its centre is close (half a face, or a whole face when the
embeddings confirm it) and its size similar; and, once the track has an embedding, only when the face also
looks like it (so a scene cut or two people crossing split tracks).
Each track keeps its `fusion_frames` best-quality embeddings; their quality-weighted mean is the track's
fused embedding.

Decisions, evaluated on every usable frame (one that passes the quality level):
- known: the frame's own embedding or the fused one matches someone at `min_score` or better. This can
  happen on the very first frame, so a door does not wait;
- unknown: `unknown_after_frames` usable frames went by without such a match, or the track ended after at
  least `min_track_frames` usable frames (shorter tracks are treated as detector noise);
- an unknown track that later matches is reported again as recognized (`upgrade_unknown`).
A known person is not reported again on the same camera while seen within `cooldown_s` (measured from the
last frame they were seen on, so someone standing at the door for minutes yields one event).

The clock is the frame's media time for files read faster than real time (results do not depend on
machine speed) and the capture time otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from agent.gallery.matcher import Candidate
from agent.types import Box


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


@dataclass(frozen=True)
class TrackEvent:
    """A decision the pipeline turns into a RecognitionEvent."""

    track_id: int
    known: bool
    candidate: Candidate | None  # the match, or for an unknown face the best rejected candidate
    observation: Observation  # best-quality observation of the track so far
    clock: float
    upgrade: bool = False


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


Matcher = Callable[[np.ndarray], Candidate | None]


class Track:
    def __init__(self, track_id: int, obs: Observation, clock: float) -> None:
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

    def __init__(self, settings: TrackerSettings, match: Matcher) -> None:
        self.s = settings
        self._match = match
        self._tracks: list[Track] = []
        self._next_id = 1
        self._person_seen: dict[str, float] = {}  # person -> clock they were last seen (cooldown)
        self.last_clock: float | None = None
        self.counters = {"tracks": 0, "known": 0, "unknown": 0, "upgrades": 0, "cooldown": 0, "evicted": 0}

    @property
    def active(self) -> int:
        return len(self._tracks)

    def update(self, observations: list[Observation], clock: float) -> list[TrackEvent]:
        """Feed one analysed frame's faces; returns the events it decides (possibly none)."""
        self.last_clock = clock
        events: list[TrackEvent] = []
        assigned = self._associate(observations)
        for obs, track in zip(observations, assigned, strict=True):
            if track is None:
                track = self._new_track(obs, clock)
            track.add(obs, clock, self.s.fusion_frames)
            if obs.usable:
                event = self._decide(track, obs, clock)
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
            self._tracks.pop(0)
            self.counters["evicted"] += 1
        track = Track(self._next_id, obs, clock)
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

    def _decide(self, track: Track, obs: Observation, clock: float) -> TrackEvent | None:
        if track.state == "known":
            if track.person is not None:
                self._person_seen[track.person] = clock
            return None
        if track.state == "unknown" and not self.s.upgrade_unknown:
            return None
        cand = self._best_candidate(track, obs)
        if cand is not None and (track.best_score is None or cand.score > track.best_score):
            track.best_score = cand.score
        if cand is not None and cand.score >= self.s.min_score:
            return self._known(track, cand, clock)
        if track.state == "pending" and track.usable >= self.s.unknown_after_frames:
            return self._unknown(track, cand, clock)
        return None

    def _known(self, track: Track, cand: Candidate, clock: float) -> TrackEvent | None:
        upgrade = track.state == "unknown"
        track.state, track.person = "known", cand.person_id
        last = self._person_seen.get(cand.person_id)
        self._person_seen[cand.person_id] = clock
        if last is not None and last <= clock < last + self.s.cooldown_s:
            self.counters["cooldown"] += 1
            return None
        self.counters["upgrades" if upgrade else "known"] += 1
        return TrackEvent(track.id, True, cand, track.best, clock, upgrade=upgrade)

    def _unknown(self, track: Track, cand: Candidate | None, clock: float) -> TrackEvent:
        track.state = "unknown"
        self.counters["unknown"] += 1
        return TrackEvent(track.id, False, cand, track.best, clock)

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
                event = self._end(track, clock)
                if event is not None:
                    events.append(event)
            else:
                keep.append(track)
        self._tracks = keep
        horizon = clock - self.s.cooldown_s
        for person in [p for p, t in self._person_seen.items() if t < horizon or t > clock]:
            del self._person_seen[person]  # bounded: only persons seen within the cooldown stay
        return events
