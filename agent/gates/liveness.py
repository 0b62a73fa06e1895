"""Liveness gate: is the face in front of the camera a live person, or a print / a screen?

Two kinds of evidence, both pure (no model, no I/O):
- `passive_liveness(image, face)`: single-frame cues of recaptured media (screen moire, specular glare on a
  glossy surface, straight frame edges around the face). A single image cannot prove liveness; these cues only
  catch careless attacks (see docs/liveness.md for what was measured).
- `TrackLiveness`: fed the frames of one tracked face. It follows image features inside the face across frames
  and fits one homography per frame pair: a print or a screen is a plane, so all its features move by one
  homography whatever the motion; a real head's nose, cheeks and eyes do not (parallax, blinks, speech).
  Optionally it also counts blinks (agent/gates/blink.py) from eye openness measured by the face mesh.
`evaluate_liveness(report, level)` applies one of LIVENESS_LEVELS; no report means refusal (fail closed).
The active challenge of HIGH (`require_challenge`) lives in agent/gates/challenge.py.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agent.errors import InputError
from agent.gates.blink import BlinkConfig, BlinkDetector
from agent.gates.pose import estimate_pose
from agent.types import Face

LEVELS = ("NONE", "LOW", "NORMAL", "HIGH")
REASONS = (
    "no_liveness_result",  # fail closed: nothing measured (or a level that needs a track got a single image)
    "needs_video",  # the level needs temporal evidence and only a single image was given
    "screen_moire",
    "specular_glare",
    "frame_edges",
    "planar_motion",  # the face moved, and it moved like a plane
    "no_3d_evidence",  # the face hardly moved or changed: nothing tells a live head from a still print
    "passive_spoof_cues",  # a track whose median single-frame score is below 0.5
    "challenge_failed",
    "no_blink",  # the level requires a blink (require_blink) and the track has not blinked
)


@dataclass(frozen=True)
class LivenessReport:
    score: float  # 0 spoof .. 1 live; for a track the lower of the passive and the temporal score
    reasons: tuple[str, ...]  # stable codes (REASONS); empty = passed (after evaluate_liveness)
    measures: Mapping[str, float] = field(default_factory=dict)  # read-only; names in docs/liveness.md
    passive_score: float = 1.0
    track_score: float | None = None  # None: single image, no temporal evidence
    challenge_passed: bool | None = None  # None: no challenge was run
    blinked: bool | None = None  # the track blinked at least once; None: the blink cue did not run

    @property
    def passed(self) -> bool:
        return not self.reasons


# ---- single-frame (passive) cues ------------------------------------------------------------------------

MOIRE_SIDE = 128  # FFT window side: the central face crop at native resolution (never upsampled)
MIN_MOIRE_FACE_PX = 96  # smaller faces: screen pixels are below the camera's resolution, moire undetermined


def _ramp(value: float, lo: float, hi: float) -> float:
    """0 at or below lo, 1 at or above hi."""
    return float(np.clip((value - lo) / max(hi - lo, 1e-9), 0.0, 1.0))


def _clip_box(face: Face, grow: float, w: int, h: int) -> tuple[int, int, int, int]:
    b = face.box
    gx, gy = b.width * grow, b.height * grow
    x1, y1 = max(0, int(b.x1 - gx)), max(0, int(b.y1 - gy))
    x2, y2 = min(w, int(math.ceil(b.x2 + gx))), min(h, int(math.ceil(b.y2 + gy)))
    return x1, y1, x2, y2


def moire_measure(grey: np.ndarray, face: Face) -> float:
    """Strongest narrow spectral peak of the central face crop, in log-magnitude above the radial median.
    Skin has a smooth, monotonically falling spectrum; a screen's pixel grid beating against the sensor grid
    adds isolated peaks. JPEG's 8-pixel block grid also makes peaks, at multiples of 1/8 cycle/pixel: those
    rows and columns are masked out. NaN when the face is too small to resolve screen pixels."""
    if min(face.box.width, face.box.height) < MIN_MOIRE_FACE_PX:
        return float("nan")
    cx, cy = face.box.center
    side = int(min(MOIRE_SIDE, face.box.width * 0.6, face.box.height * 0.6))
    x0, y0 = int(cx - side / 2), int(cy - side / 2)
    crop = grey[max(0, y0) : y0 + side, max(0, x0) : x0 + side].astype(np.float32)
    if crop.shape[0] < 48 or crop.shape[1] < 48:
        return float("nan")
    crop = crop - cv2.GaussianBlur(crop, (0, 0), 3.0)  # keep texture only; lighting gradients leak
    win = np.outer(np.hanning(crop.shape[0]), np.hanning(crop.shape[1])).astype(np.float32)
    mag = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(crop * win))))
    fy = np.fft.fftshift(np.fft.fftfreq(crop.shape[0]))[:, None]
    fx = np.fft.fftshift(np.fft.fftfreq(crop.shape[1]))[None, :]
    radius = np.sqrt(fx**2 + fy**2)
    band = (radius > 0.12) & (radius < 0.48)
    for k in (1, 2, 3, 4):  # JPEG block grid
        band &= (np.abs(np.abs(fx) - k / 8) > 0.02) & (np.abs(np.abs(fy) - k / 8) > 0.02)
    rbin = np.minimum((radius * 40).astype(int), 40)
    medians = np.zeros(41, np.float32)
    for r in np.unique(rbin[band]):
        medians[r] = np.median(mag[band & (rbin == r)])
    excess = (mag - medians[rbin])[band]
    return float(excess.max()) if excess.size else float("nan")


def glare_measure(bgr: np.ndarray, face: Face) -> float:
    """Fraction of the inner face box that is one blob of near-white, colourless, saturated pixels: glossy
    paper and glass reflect a lamp as a flat white patch, skin highlights are small and keep some colour."""
    h, w = bgr.shape[:2]
    x1, y1, x2, y2 = _clip_box(face, -0.1, w, h)
    crop = bgr[y1:y2, x1:x2]
    if crop.size == 0:
        return 0.0
    hsv = cv2.cvtColor(crop, cv2.COLOR_BGR2HSV)
    mask = ((hsv[..., 2] >= 245) & (hsv[..., 1] <= 30)).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    largest = stats[1:, cv2.CC_STAT_AREA].max() if n > 1 else 0
    return float(largest) / float(mask.size)


def frame_edge_measure(grey: np.ndarray, face: Face) -> float:
    """How many sides of the face (0..4) have a long straight edge close by that does not cross the face: the
    border of a print or the bezel of a screen. Room corners, doors and shelves make such lines too, which is
    why this cue is weak."""
    h, w = grey.shape
    x1, y1, x2, y2 = _clip_box(face, 1.0, w, h)
    region = grey[y1:y2, x1:x2]
    if region.size == 0:
        return 0.0
    scale = min(1.0, 256.0 / max(region.shape))
    small = (
        cv2.resize(region, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else region
    )
    edges = cv2.Canny(cv2.GaussianBlur(small, (5, 5), 0), 40, 120)
    fw = face.box.width * scale
    lines = cv2.HoughLinesP(edges, 1, np.pi / 180, 40, minLineLength=0.9 * fw, maxLineGap=4)
    if lines is None:
        return 0.0
    bx1, by1 = (face.box.x1 - x1) * scale, (face.box.y1 - y1) * scale
    bx2, by2 = (face.box.x2 - x1) * scale, (face.box.y2 - y1) * scale
    sides = set()
    for lx1, ly1, lx2, ly2 in np.asarray(lines).reshape(-1, 4):
        if abs(lx2 - lx1) >= abs(ly2 - ly1):  # roughly horizontal: above or below the face
            y = (ly1 + ly2) / 2
            if y < by1 - 0.05 * fw:
                sides.add("top")
            elif y > by2 + 0.05 * fw:
                sides.add("bottom")
        else:
            x = (lx1 + lx2) / 2
            if x < bx1 - 0.05 * fw:
                sides.add("left")
            elif x > bx2 + 0.05 * fw:
                sides.add("right")
    return float(len(sides))


class PassiveBounds(BaseModel):
    """Where each single-frame measure starts (lo) and finishes (hi) counting as spoof evidence."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    moire_lo: float = Field(2.2, ge=0, le=20, description="moire peak (log units) below which: no evidence")
    moire_hi: float = Field(3.2, ge=0, le=20, description="moire peak at which the evidence is full")
    glare_lo: float = Field(0.10, ge=0, le=1, description="glare blob fraction below which: no evidence")
    glare_hi: float = Field(0.25, ge=0, le=1, description="glare blob fraction of full evidence")
    edges_lo: float = Field(3.0, ge=0, le=4, description="framed sides below which: no evidence")
    edges_hi: float = Field(4.0, ge=0, le=4, description="framed sides of full evidence")


def passive_liveness(
    image_bgr: np.ndarray, face: Face, bounds: PassiveBounds | None = None
) -> LivenessReport:
    """Single-frame cues; score 1 - strongest evidence. Reasons list every cue with evidence >= 0.5."""
    if not isinstance(image_bgr, np.ndarray) or image_bgr.ndim != 3 or image_bgr.size == 0:
        raise InputError("liveness needs a non-empty HxWx3 BGR image array", code="invalid_image")
    b = bounds or PassiveBounds()
    grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
    moire = moire_measure(grey, face)
    glare = glare_measure(image_bgr, face)
    edges = frame_edge_measure(grey, face)
    evidence = {
        "screen_moire": 0.0 if math.isnan(moire) else _ramp(moire, b.moire_lo, b.moire_hi),
        "specular_glare": _ramp(glare, b.glare_lo, b.glare_hi),
        "frame_edges": _ramp(edges, b.edges_lo, b.edges_hi),
    }
    measures = {"glare": glare, "frame_edges": edges}
    if not math.isnan(moire):  # left out when the face is too small to tell (keeps measures JSON-safe)
        measures["moire"] = moire
    measures.update({f"evidence_{k}": v for k, v in evidence.items()})
    score = 1.0 - max(evidence.values())
    reasons = tuple(k for k, v in evidence.items() if v >= 0.5)
    return LivenessReport(score, reasons, MappingProxyType(measures), passive_score=score)


# ---- temporal cue: is the face a plane? ----------------------------------------------------------------


class TrackConfig(BaseModel):
    """Temporal planarity test of one tracked face. Residuals are fractions of the face box width."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    work_face_px: int = Field(
        112, ge=48, le=256, description="the face is rescaled to this width for tracking"
    )
    max_points: int = Field(80, ge=16, le=400, description="features tracked inside the face box")
    min_points: int = Field(16, ge=8, le=200, description="fewer surviving features start a new segment")
    segment_frames: int = Field(30, ge=4, le=300, description="frames per segment (bounds tracking drift)")
    min_frames: int = Field(10, ge=3, le=1000, description="frames with residuals before a report")
    min_seconds: float = Field(0.6, ge=0, le=60, description="track duration before a report")
    max_gap_s: float = Field(0.5, gt=0, le=10, description="a longer pause between frames starts a segment")
    history: int = Field(150, ge=10, le=5000, description="per-frame measures kept (bounded)")
    passive_every: int = Field(5, ge=1, le=100, description="run the single-frame cues on every n-th frame")
    plane_lo: float = Field(0.006, ge=0, le=1, description="residual at or below which track_score is 0")
    plane_hi: float = Field(0.016, ge=0, le=1, description="residual at or above which track_score is 1")
    min_motion: float = Field(
        0.01, ge=0, le=1, description="similarity residual needed to call a track planar"
    )
    percentile: float = Field(80, ge=50, le=100, description="percentile of per-frame residuals reported")


@dataclass
class _Segment:
    roi: tuple[int, int, int, int]  # x0, y0, x1, y1 of the tracked region in the image
    scale: float  # image -> work crop
    centre: tuple[float, float]
    width: float
    t_last: float
    prev: np.ndarray  # previous work crop (grey)
    ref: np.ndarray  # (N, 2) feature positions in the first frame
    cur: np.ndarray  # (N, 2) current positions
    frames: int = 1


def _similarity_residual(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Per-point error of the least-squares similarity (scale, rotation, translation) src -> dst."""
    a = np.zeros((2 * len(src), 4))
    a[0::2] = np.c_[src[:, 0], -src[:, 1], np.ones(len(src)), np.zeros(len(src))]
    a[1::2] = np.c_[src[:, 1], src[:, 0], np.zeros(len(src)), np.ones(len(src))]
    p, *_ = np.linalg.lstsq(a, dst.reshape(-1), rcond=None)
    return np.linalg.norm((a @ p).reshape(-1, 2) - dst, axis=1)


def _homography_residual(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    hmat, _ = cv2.findHomography(src.astype(np.float32), dst.astype(np.float32), 0)
    if hmat is None:
        return np.full(len(src), np.inf)
    proj = cv2.perspectiveTransform(src.reshape(-1, 1, 2).astype(np.float64), hmat).reshape(-1, 2)
    return np.linalg.norm(proj - dst, axis=1)


def _trimmed_rms(err: np.ndarray, keep: float = 0.9) -> float:
    """RMS of the best `keep` fraction: a few lost features must not look like parallax."""
    e = np.sort(err)[: max(1, int(len(err) * keep))]
    return float(np.sqrt((e**2).mean()))


class TrackLiveness:
    """Accumulates evidence for one tracked face. Not thread-safe: one instance per track, one feeder.

    A report is available once `min_frames` frames with residuals span `min_seconds` (defaults: 10 frames and
    0.6 s, i.e. about 0.6 s at 15-30 fps). Memory is bounded: one work crop, <= max_points features, and
    `history` per-frame values."""

    def __init__(
        self,
        config: TrackConfig | None = None,
        passive: PassiveBounds | None = None,
        blink: BlinkConfig | None = None,
    ) -> None:
        self.config = config or TrackConfig()
        self.blink = BlinkDetector(blink) if blink is not None else None  # None: no blink cue
        self._passive_bounds = passive
        self._seg: _Segment | None = None
        self._h_res: deque[float] = deque(maxlen=self.config.history)
        self._s_res: deque[float] = deque(maxlen=self.config.history)
        self._passive: deque[float] = deque(maxlen=max(4, self.config.history // self.config.passive_every))
        self._yaw: deque[float] = deque(maxlen=self.config.history)
        self._t_first: float | None = None
        self._t_last = 0.0
        self._frames = 0
        self.segments = 0

    def wants_eyes(self, face: Face, timestamp: float) -> bool:
        """Should the caller measure eye openness (run the face mesh) on this frame? False without a blink
        cue, for small faces, above the configured rate and once the track has blinked enough."""
        return self.blink is not None and self.blink.wants(face.box.width, timestamp)

    def update(
        self, image_bgr: np.ndarray, face: Face, timestamp: float, eye_openness: float | None = None
    ) -> LivenessReport | None:
        """Feed one frame (timestamps in seconds, increasing). Returns a report once there is enough evidence.
        `eye_openness` (agent/inference/mesh.py) feeds the blink cue on the frames `wants_eyes` asked for."""
        if not isinstance(image_bgr, np.ndarray) or image_bgr.ndim != 3 or image_bgr.size == 0:
            raise InputError("liveness needs a non-empty HxWx3 BGR image array", code="invalid_image")
        if self._t_first is not None and timestamp < self._t_last:
            raise InputError("liveness frames must come in time order", code="invalid_timestamp")
        grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
        self._t_first = timestamp if self._t_first is None else self._t_first
        self._t_last = timestamp
        if eye_openness is not None and self.blink is not None:
            self.blink.update(eye_openness, timestamp)
        if self._frames % self.config.passive_every == 0:
            self._passive.append(passive_liveness(image_bgr, face, self._passive_bounds).score)
        self._frames += 1
        try:
            self._yaw.append(estimate_pose(face.keypoints).yaw)
        except ValueError:
            pass  # keypoints unusable for pose: the yaw range simply misses this frame
        if self._seg is None or self._must_restart(face, timestamp):
            self._seg = self._start(grey, face, timestamp)
        else:
            self._step(grey, timestamp)
        return self.report()

    @staticmethod
    def _roi(grey: np.ndarray, roi: tuple[int, int, int, int], scale: float) -> np.ndarray:
        x0, y0, x1, y1 = roi
        return cv2.resize(grey[y0:y1, x0:x1], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)

    def _start(self, grey: np.ndarray, face: Face, timestamp: float) -> _Segment | None:
        h, w = grey.shape
        roi = _clip_box(face, 1.0, w, h)
        if roi[2] - roi[0] < 16 or roi[3] - roi[1] < 16:
            return None
        scale = min(2.0, self.config.work_face_px / max(face.box.width, 1.0))
        work = self._roi(grey, roi, scale)
        box = (np.array([face.box.x1, face.box.y1, face.box.x2, face.box.y2]) - [*roi[:2], *roi[:2]]) * scale
        bx1, by1, bx2, by2 = box.astype(int)
        mask = np.zeros_like(work)
        mask[max(0, by1) : by2, max(0, bx1) : bx2] = 255
        pts = cv2.goodFeaturesToTrack(work, self.config.max_points, 0.01, 4, mask=mask, blockSize=5)
        if pts is None or len(pts) < self.config.min_points:
            return None
        self.segments += 1
        pts = pts.reshape(-1, 2)
        return _Segment(roi, scale, face.box.center, face.box.width, timestamp, work, pts, pts.copy())

    def _must_restart(self, face: Face, timestamp: float) -> bool:
        seg = self._seg
        assert seg is not None
        moved = math.dist(face.box.center, seg.centre) > 0.8 * seg.width
        resized = abs(face.box.width / seg.width - 1.0) > 0.4
        late = timestamp - seg.t_last > self.config.max_gap_s
        return moved or resized or late or seg.frames >= self.config.segment_frames

    def _step(self, grey: np.ndarray, timestamp: float) -> None:
        seg = self._seg
        assert seg is not None
        work = self._roi(grey, seg.roi, seg.scale)
        p0 = seg.cur.reshape(-1, 1, 2).astype(np.float32)
        lk = {"winSize": (15, 15), "maxLevel": 3}
        p1, st1, _ = cv2.calcOpticalFlowPyrLK(seg.prev, work, p0, None, **lk)
        back, st2, _ = cv2.calcOpticalFlowPyrLK(work, seg.prev, p1, None, **lk)
        fb = np.linalg.norm((back - p0).reshape(-1, 2), axis=1)  # forward-backward check drops lost features
        ok = (st1.reshape(-1) == 1) & (st2.reshape(-1) == 1) & (fb < 0.5)
        seg.prev, seg.t_last, seg.frames = work, timestamp, seg.frames + 1
        seg.ref, seg.cur = seg.ref[ok], p1.reshape(-1, 2)[ok]
        if len(seg.cur) < self.config.min_points:
            self._seg = None  # next frame starts a new segment
            return
        width = seg.width * seg.scale
        self._h_res.append(_trimmed_rms(_homography_residual(seg.ref, seg.cur)) / width)
        self._s_res.append(_trimmed_rms(_similarity_residual(seg.ref, seg.cur)) / width)

    def report(self) -> LivenessReport | None:
        c = self.config
        if self._t_first is None or len(self._h_res) < c.min_frames:
            return None
        if self._t_last - self._t_first < c.min_seconds:
            return None
        nonplanar = float(np.percentile(self._h_res, c.percentile))
        motion = float(np.percentile(self._s_res, c.percentile))
        track_score = _ramp(nonplanar, c.plane_lo, c.plane_hi)
        passive = float(np.median(self._passive)) if self._passive else 1.0
        blinked = None if self.blink is None else self.blink.blinks > 0
        reasons: list[str] = []
        planar = track_score < 0.5 and motion >= c.min_motion
        if track_score < 0.5 and not blinked:
            reasons.append("planar_motion" if planar else "no_3d_evidence")
        elif planar:
            reasons.append("planar_motion")  # a blink never excuses a face that moved like a plane
        if passive < 0.5:
            reasons.append("passive_spoof_cues")
        yaw_range = float(np.ptp(self._yaw)) if self._yaw else 0.0
        measures = {
            "nonplanar": nonplanar,
            "motion": motion,
            "frames": float(self._frames),
            "seconds": self._t_last - self._t_first,
            "segments": float(self.segments),
            "yaw_range": yaw_range,
            "passive_median": passive,
        }
        if self.blink is not None:
            measures.update(self.blink.measures())
        # A blink is live evidence of its own (a still print never blinks) unless the face moved as a plane.
        live = 1.0 if blinked and not planar else track_score
        return LivenessReport(
            min(live, passive),
            tuple(reasons),
            MappingProxyType(measures),
            passive_score=passive,
            track_score=track_score,
            blinked=blinked,
        )


# ---- levels ---------------------------------------------------------------------------------------------


class LivenessThresholds(BaseModel):
    """One liveness level (an operating point). See docs/liveness.md for what each default stops."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_passive: float = Field(ge=0, le=1, description="lowest single-frame score (track: its median)")
    require_track: bool = Field(description="camera loop: temporal evidence of a 3D, live face is required")
    min_track: float = Field(ge=0, le=1, description="lowest track_score when require_track")
    require_challenge: bool = Field(False, description="camera loop: an active challenge must be passed")
    blink_counts: bool = Field(
        False,
        description="camera loop: a blink stands in for missing parallax (no_3d_evidence), never for a face "
        "that moved like a plane (planar_motion)",
    )
    require_blink: bool = Field(False, description="camera loop: the track must have blinked (no_blink)")

    @property
    def uses_blinks(self) -> bool:
        """The camera loop must run the face mesh for this level."""
        return self.blink_counts or self.require_blink


LIVENESS_LEVELS: dict[str, LivenessThresholds] = {
    # Refuses only positive evidence of a spoof: screen/print cues, or a face that moved like a flat plane.
    "LOW": LivenessThresholds(min_passive=0.5, require_track=False, min_track=0.0),
    # Additionally needs live evidence within the track: non-planar motion (parallax, speech) or a blink.
    "NORMAL": LivenessThresholds(min_passive=0.5, require_track=True, min_track=0.5, blink_counts=True),
    # Stricter bounds, parallax required: a blink does not stand in, because a print with the eyes cut
    # out blinks (the attacker's own eyes). With require_challenge (kiosks with a screen) also a head turn.
    "HIGH": LivenessThresholds(min_passive=0.75, require_track=True, min_track=0.75),
}


def evaluate_liveness(
    report: LivenessReport | None,
    level: str,
    levels: dict[str, LivenessThresholds] | None = None,
    *,
    single_image: bool = False,
) -> LivenessReport:
    """Verdict at `level` (NONE, LOW, NORMAL, HIGH). Fails closed: no report fails every level but NONE.
    `single_image=True` (the HTTP API) judges a report without temporal evidence on its passive score alone;
    otherwise (the camera loop) a level that requires a track refuses such a report with `needs_video`."""
    levels = LIVENESS_LEVELS if levels is None else levels
    if level not in LEVELS:
        raise InputError(
            f"liveness level must be one of {', '.join(LEVELS)}, got {level!r}", code="invalid_liveness_level"
        )
    if level != "NONE" and level not in levels:
        raise InputError(f"liveness level {level!r} is not configured", code="invalid_liveness_level")
    if report is None:
        empty: Mapping[str, float] = MappingProxyType({})
        return LivenessReport(
            0.0, () if level == "NONE" else ("no_liveness_result",), empty, passive_score=0.0
        )
    if level == "NONE":
        return replace(report, reasons=())
    bounds = levels[level]
    reasons = [r for r in report.reasons if r in ("screen_moire", "specular_glare", "frame_edges")]
    if report.passive_score < bounds.min_passive:
        reasons.append("passive_spoof_cues")
    if report.track_score is None:
        if bounds.require_track and not single_image:
            reasons.append("needs_video")
    else:
        planar = "planar_motion" in report.reasons
        blink_stands_in = bounds.blink_counts and report.blinked is True
        if planar or (bounds.require_track and report.track_score < bounds.min_track and not blink_stands_in):
            reasons.append("planar_motion" if planar else "no_3d_evidence")
    if bounds.require_blink and not single_image and report.blinked is not True:
        reasons.append("no_blink")
    if bounds.require_challenge and not single_image and report.challenge_passed is not True:
        reasons.append("challenge_failed")
    return replace(report, reasons=tuple(dict.fromkeys(reasons)))
