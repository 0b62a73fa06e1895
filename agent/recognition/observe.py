"""What the camera loop shows the console: each camera's latest frame with its faces, and recent faces.

`FrameObserver` is fed by the recognition threads (`RecognitionPipeline(observer=...)`) and read by the
console. It is the one owner of that state; every buffer is bounded (two frames per camera, `track_crops`
face crops per camera, `recent` faces in all), its lock is held only to swap references or copy a short
list, and it never waits on a reader: a slow console page cannot stall recognition. Frames are kept by
reference (the loop never writes to a frame it has analysed) and JPEG-encoded only when a page asks.

Per track the observer keeps the crop of its best-quality usable face; when the tracker decides the track
(a known or unknown event) that crop, its embedding and the match become one `RecentFace`. Crops carry a
margin around the face (1.5 face sizes each side: the detector is as sure of the face in the crop as in
the frame; with 0.5 it often is not) so they can be enrolled again through the full detect + quality gate.

Erasing a person (`forget_person`) drops their faces from the ring and leaves a tombstone: a bounded set
(the last `ERASED_MAX` erasures) of (group, person id), each kept `ERASED_TTL_S` and for as long as a track
still decided as that person is seen. Until it goes, a decision naming that person is not recorded (a
track decided from a match made before the erasure, or ending after it) and the live view shows such a
track's face without the name; the track's best crop is not kept.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from agent.capture.worker import Frame
from agent.recognition.tracking import FaceTracker, Observation, Track, TrackEvent

# A track's best crop is kept this long after it was last seen: long enough for the tracker to decide the
# track after it ends (track_timeout_s, 1 s by default), short enough that an erased person's face does not
# linger in memory.
BEST_TTL_S = 30.0
ERASED_TTL_S = 300.0
ERASED_MAX = 256


@dataclass(frozen=True)
class Detection:
    """One face of a live frame, in the frame's pixel coordinates."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    track_id: int | None
    state: str  # pending | known | unknown | unusable
    person_id: str | None
    user_info: str | None
    score: float | None
    quality: float | None
    quality_level: str | None
    usable: bool
    liveness: dict[str, object] | None  # None: liveness is off on this camera

    def as_json(self) -> dict[str, object]:
        return {
            "box": [round(v, 1) for v in self.box],
            "track_id": self.track_id,
            "state": self.state,
            "person_id": self.person_id,
            "user_info": self.user_info,
            "score": None if self.score is None else round(self.score, 1),
            "quality": None if self.quality is None else round(self.quality, 3),
            "quality_level": self.quality_level,
            "usable": self.usable,
            "liveness": self.liveness,
        }


@dataclass(frozen=True)
class LiveView:
    camera_id: str
    seq: int
    captured_at: float
    width: int
    height: int
    detections: tuple[Detection, ...]


@dataclass(frozen=True)
class RecentFace:
    """A decided track: its best face crop (JPEG), embedding and match."""

    id: int
    camera_id: str
    track_id: int
    at: float  # wall clock
    known: bool
    person_id: str | None  # the match (known) or the best rejected candidate (unknown)
    user_info: str | None
    group_id: str | None
    matched_face_id: str | None
    score: float | None
    quality: float | None
    quality_level: str | None  # strongest quality level the face passed (agent.gates.quality)
    vector: np.ndarray | None = field(repr=False)
    jpeg: bytes = field(repr=False)


@dataclass
class _Best:
    quality: float
    level: str | None
    crop: np.ndarray
    vector: np.ndarray | None
    seen: float


class _CameraState:
    def __init__(self, track_crops: int) -> None:
        self.frames: deque[tuple[LiveView, np.ndarray]] = deque(maxlen=2)
        self.best: OrderedDict[int, _Best] = OrderedDict()  # track id -> best crop so far (LRU, bounded)
        self.track_crops = track_crops
        self.jpeg: tuple[int, bytes] | None = None  # (seq, bytes) of the last encoded frame


class FrameObserver:
    """Bounded taps on the camera loop (see the module doc)."""

    def __init__(
        self,
        recent: int = 300,
        track_crops: int = 32,
        crop_margin: float = 1.5,
        max_crop_side: int = 320,
        max_frame_side: int = 960,
        jpeg_quality: int = 80,
    ) -> None:
        self._lock = threading.Lock()
        self._cams: dict[str, _CameraState] = {}
        self._recent: deque[RecentFace] = deque(maxlen=recent)
        self._ids = itertools.count(1)
        self._track_crops = track_crops
        self._margin = crop_margin
        self._max_crop = max_crop_side
        self._max_frame = max_frame_side
        self._quality = jpeg_quality
        self.recorded = 0  # faces ever put in the ring (the oldest fall out)
        self._erased: OrderedDict[tuple[str, str], float] = OrderedDict()  # (group, person) -> expiry

    # -- the camera loop (recognition threads) -------------------------------------------------------------

    def observe(
        self,
        camera_id: str,
        frame: Frame,
        observations: Sequence[Observation],
        tracker: FaceTracker,
        events: Iterable[TrackEvent],
    ) -> None:
        """One analysed frame: its faces (after `tracker.update`) and the events the update decided."""
        pixels = frame.pixels
        tracks = _tracks_of(tracker, observations)
        erased = self._erased_tracks(tracks)
        detections = tuple(
            _nameless(_detection(o, t)) if t is not None and t.id in erased else _detection(o, t)
            for o, t in zip(observations, tracks, strict=True)
        )
        h, w = pixels.shape[:2]
        view = LiveView(camera_id, frame.seq, frame.captured_at, w, h, detections)
        cam = self._camera(camera_id)
        for obs, track in zip(observations, tracks, strict=True):
            if track is not None and track.id in erased:
                cam.best.pop(track.id, None)
            elif track is not None and obs.usable and obs.vector is not None:
                self._keep_best(cam, track.id, obs, pixels)
        events = [ev for ev in events if ev.track_id not in erased and not self._is_erased(ev.candidate)]
        recent = [r for ev in events if (r := self._recent_face(cam, camera_id, ev, pixels)) is not None]
        _forget_old(cam.best, time.monotonic() - BEST_TTL_S)
        with self._lock:
            # Checked again under the lock: an erasure between the checks above and here still holds.
            recent = [r for r in recent if (r.group_id or "", r.person_id or "") not in self._erased]
            cam.frames.append((view, pixels))
            self._recent.extend(recent)
            self.recorded += len(recent)

    def _erased_tracks(self, tracks: Sequence[Track | None]) -> set[int]:
        """Ids of the tracks decided as an erased person; each such track keeps its tombstone alive."""
        now = time.monotonic()
        with self._lock:
            while self._erased and next(iter(self._erased.values())) < now:
                self._erased.popitem(last=False)  # expiry order is insertion order (refreshes move to end)
            if not self._erased:
                return set()
            out = set()
            for track in tracks:
                c = track.candidate if track is not None else None
                key = (c.group_id, c.outer_id) if c is not None else None
                if key is not None and key in self._erased:
                    out.add(track.id)
                    self._erased[key] = now + ERASED_TTL_S
                    self._erased.move_to_end(key)
            return out

    def _is_erased(self, candidate) -> bool:  # noqa: ANN001 (a Candidate or None)
        if candidate is None:
            return False
        with self._lock:
            return (candidate.group_id, candidate.outer_id) in self._erased

    def _camera(self, camera_id: str) -> _CameraState:
        cam = self._cams.get(camera_id)
        if cam is None:
            with self._lock:
                cam = self._cams.setdefault(camera_id, _CameraState(self._track_crops))
        return cam

    def _keep_best(self, cam: _CameraState, track_id: int, obs: Observation, pixels: np.ndarray) -> None:
        # Only the recognition thread owning this camera touches cam.best: no lock needed.
        quality = obs.quality if obs.quality is not None else obs.weight
        best = cam.best.get(track_id)
        if best is not None and best.quality >= quality:
            best.seen = time.monotonic()
            cam.best.move_to_end(track_id)
            return
        crop = self._crop(pixels, obs)
        cam.best[track_id] = _Best(quality, obs.quality_level, crop, obs.vector, time.monotonic())
        cam.best.move_to_end(track_id)
        while len(cam.best) > cam.track_crops:
            cam.best.popitem(last=False)

    def _crop(self, pixels: np.ndarray, obs: Observation) -> np.ndarray:
        b, m = obs.box, self._margin
        h, w = pixels.shape[:2]
        x1, y1 = int(max(0, b.x1 - m * b.width)), int(max(0, b.y1 - m * b.height))
        x2, y2 = int(min(w, b.x2 + m * b.width)), int(min(h, b.y2 + m * b.height))
        crop = pixels[y1:y2, x1:x2]
        side = max(crop.shape[:2]) if crop.size else 0
        if side > self._max_crop:
            scale = self._max_crop / side
            crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(crop).copy()

    def _recent_face(
        self, cam: _CameraState, camera_id: str, ev: TrackEvent, pixels: np.ndarray
    ) -> RecentFace | None:
        if ev.liveness_update:  # the same appearance again (its liveness passed): one row per decision
            return None
        best = cam.best.get(ev.track_id)
        crop = best.crop if best is not None else self._crop(pixels, ev.observation)
        vector = best.vector if best is not None else ev.observation.vector
        if crop.size == 0:
            return None
        ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            return None
        c = ev.candidate
        return RecentFace(
            id=next(self._ids),
            camera_id=camera_id,
            track_id=ev.track_id,
            at=time.time(),
            known=ev.known,
            person_id=c.outer_id if c is not None else None,
            user_info=(c.user_info or None) if c is not None else None,
            group_id=c.group_id if c is not None else None,
            matched_face_id=c.face_id if c is not None else None,
            score=float(c.score) if c is not None else None,
            quality=best.quality if best is not None else ev.observation.quality,
            quality_level=best.level if best is not None else ev.observation.quality_level,
            vector=None if vector is None else np.asarray(vector, dtype=np.float32).copy(),
            jpeg=bytes(buf),
        )

    # -- readers (console threads) -------------------------------------------------------------------------

    def views(self) -> list[LiveView]:
        with self._lock:
            return [cam.frames[-1][0] for cam in self._cams.values() if cam.frames]

    def cameras(self) -> list[str]:
        with self._lock:
            return list(self._cams)

    def frame_jpeg(self, camera_id: str, seq: int | None = None) -> bytes | None:
        """The frame `seq` if still kept (else the latest) as JPEG, at most `max_frame_side` wide."""
        with self._lock:
            cam = self._cams.get(camera_id)
            if cam is None or not cam.frames:
                return None
            view, pixels = next(((v, p) for v, p in cam.frames if v.seq == seq), cam.frames[-1])
            cached = cam.jpeg
        if cached is not None and cached[0] == view.seq:
            return cached[1]
        side = max(pixels.shape[:2])
        if side > self._max_frame:
            scale = self._max_frame / side
            pixels = cv2.resize(pixels, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, self._quality])
        if not ok:
            return None
        data = bytes(buf)
        with self._lock:
            cam.jpeg = (view.seq, data)
        return data

    def recent(self) -> list[RecentFace]:
        """Newest first."""
        with self._lock:
            return list(reversed(self._recent))

    def get(self, ids: Iterable[int]) -> list[RecentFace]:
        wanted = set(ids)
        with self._lock:
            return [r for r in self._recent if r.id in wanted]

    def discard(self, ids: Iterable[int]) -> int:
        """Drop these faces (dismissed or enrolled); returns how many were still kept."""
        wanted = set(ids)
        return self._drop(lambda r: r.id in wanted)

    def forget_person(self, group_id: str, outer_id: str) -> int:
        """Drop every face matched to this person (an erased person leaves no crop behind in memory), and
        keep their tombstone so that a track already decided as them records nothing more (module doc)."""
        key = (group_id, outer_id)
        with self._lock:
            self._erased.pop(key, None)
            self._erased[key] = time.monotonic() + ERASED_TTL_S
            while len(self._erased) > ERASED_MAX:
                self._erased.popitem(last=False)
        return self._drop(lambda r: r.person_id == outer_id and r.group_id == group_id)

    def _drop(self, doomed) -> int:  # noqa: ANN001 (a predicate on RecentFace)
        with self._lock:
            keep = [r for r in self._recent if not doomed(r)]
            gone = len(self._recent) - len(keep)
            self._recent = deque(keep, maxlen=self._recent.maxlen)
        return gone


def _forget_old(best: OrderedDict[int, _Best], horizon: float) -> None:
    """Drop the crops of tracks unseen since `horizon` (least recently seen first: the dict's order)."""
    while best and next(iter(best.values())).seen < horizon:
        best.popitem(last=False)


def _nameless(det: Detection) -> Detection:
    """A detection of an erased person's track: the face stays on the live view, the name does not."""
    state = "unknown" if det.state == "known" else det.state
    return dataclasses.replace(det, state=state, person_id=None, user_info=None, score=None)


def _tracks_of(tracker: FaceTracker, observations: Sequence[Observation]) -> list[Track | None]:
    """The track each observation joined in the last update: a track takes its observation's Box object
    (Track.add), so identity finds it. Reads the tracker's list from its own recognition thread."""
    by_box = {id(t.box): t for t in tracker._tracks}  # noqa: SLF001 (same package, read-only, same thread)
    return [by_box.get(id(o.box)) for o in observations]


def _detection(obs: Observation, track: Track | None) -> Detection:
    state = "unusable" if not obs.usable else "pending"
    person = info = score = None
    if track is not None:
        if track.state in ("known", "unknown"):
            state = track.state
        if track.state == "known" and track.candidate is not None:
            person, info = track.candidate.outer_id, track.candidate.user_info or None
            score = float(track.candidate.score)
        elif track.best_score is not None:
            score = float(track.best_score)
    live = None
    if track is not None and track.live is not None:
        lv = track.live
        live = {"passed": lv.passed, "score": lv.score, "level": lv.level, "reasons": list(lv.reasons)}
    b = obs.box
    return Detection(
        (b.x1, b.y1, b.x2, b.y2),
        track.id if track is not None else None,
        state,
        person,
        info,
        score,
        obs.quality,
        obs.quality_level,
        obs.usable,
        live,
    )
