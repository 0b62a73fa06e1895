"""Face quality gate: pure functions from (image, detected face) to measures, and from measures to a verdict.

`measure_quality` looks at one face once; `evaluate_quality` applies one of the levels NONE / LOW / NORMAL /
HIGH (the cloud APIs' `qualityControl`). Thresholds, their measured basis and the conventions are in
docs/quality.md. Nothing here keeps state or touches a model: the pose comes from the detector keypoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agent.errors import InputError
from agent.gates.pose import estimate_pose
from agent.inference.align import box_transform
from agent.types import Face

CROP_SIZE = 64  # grey crop side for blur and exposure: larger faces are area-averaged down to it
CROP_MARGIN = -0.1  # inner 80 % of the box side: skin, eyes and mouth, little background
# blur_score mapping: log-linear in the Laplacian variance between these two values (see docs/quality.md)
BLUR_VAR_SHARP = 2000.0  # at or above: blur_score 0
BLUR_VAR_BLURRED = 40.0  # at or below: blur_score 1
CONTRAST_NORM = 40.0  # the crop is rescaled to this grey standard deviation before the Laplacian


@dataclass(frozen=True)
class QualityMeasures:
    """What the gate saw. Angles in degrees (conventions in agent/gates/pose.py), grey levels 0..255."""

    size_px: float  # shorter side of the detector box, in image pixels
    blur: float  # variance of the Laplacian on the contrast-normalised CROP_SIZE grey crop
    blur_score: float  # 0 sharp .. 1 blurred (log-linear map of `blur`)
    yaw: float
    pitch: float
    roll: float
    brightness: float  # mean grey level of the face crop
    contrast: float  # standard deviation of the grey levels of the face crop
    confidence: float  # detector score
    border_fraction: float  # fraction of the box area outside the image
    pose_residual: float  # keypoint fit error / inter-eye distance (large = keypoints unlike a face)


@dataclass(frozen=True)
class QualityReport:
    score: float  # 0..1, 1 best: the lowest per-measure quality (a face is as good as its worst aspect)
    reasons: tuple[str, ...]  # stable snake_case codes of the failed checks; empty = passed
    measures: QualityMeasures

    @property
    def passed(self) -> bool:
        return not self.reasons


class QualityThresholds(BaseModel):
    """One quality level. A face passes when every measure is inside its bound."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_size_px: float = Field(ge=0, le=4096, description="shortest face box side in pixels")
    max_blur_score: float = Field(ge=0, le=1, description="largest blur_score (0 sharp, 1 blurred)")
    max_yaw: float = Field(ge=0, le=180, description="largest |yaw| in degrees")
    max_pitch: float = Field(ge=0, le=180, description="largest |pitch| in degrees")
    max_roll: float = Field(ge=0, le=180, description="largest |roll| in degrees")
    min_brightness: float = Field(ge=0, le=255, description="lowest mean grey level of the face")
    max_brightness: float = Field(ge=0, le=255, description="highest mean grey level of the face")
    min_contrast: float = Field(ge=0, le=255, description="lowest grey standard deviation of the face")
    min_confidence: float = Field(ge=0, le=1, description="lowest detector score")
    max_border_fraction: float = Field(ge=0, le=1, description="largest box fraction outside the image")


# Operating points chosen from the measured distributions in docs/quality.md.
QUALITY_LEVELS: dict[str, QualityThresholds] = {
    "LOW": QualityThresholds(
        min_size_px=24,
        max_blur_score=0.7,
        max_yaw=45,
        max_pitch=35,
        max_roll=45,
        min_brightness=25,
        max_brightness=240,
        min_contrast=6,
        min_confidence=0.5,
        max_border_fraction=0.3,
    ),
    "NORMAL": QualityThresholds(
        min_size_px=40,
        max_blur_score=0.5,
        max_yaw=30,
        max_pitch=25,
        max_roll=30,
        min_brightness=40,
        max_brightness=225,
        min_contrast=10,
        min_confidence=0.6,
        max_border_fraction=0.15,
    ),
    "HIGH": QualityThresholds(
        min_size_px=80,
        max_blur_score=0.3,
        max_yaw=20,
        max_pitch=20,
        max_roll=20,
        min_brightness=60,
        max_brightness=200,
        min_contrast=16,
        min_confidence=0.65,
        max_border_fraction=0.05,
    ),
}
LEVELS = ("NONE", "LOW", "NORMAL", "HIGH")


def _crop(grey: np.ndarray, face: Face) -> np.ndarray:
    """The CROP_SIZE grey crop of the inner face box, only the part that lies inside the image (float32)."""
    m = box_transform(face, CROP_SIZE, CROP_MARGIN)  # axis-aligned: x' = m[0,0] x + m[0,2]
    h, w = grey.shape
    if m[0, 0] < 0.5:  # area-average large faces first: bilinear warping would alias and fake sharpness
        factor = int(1.0 / m[0, 0])
        grey = cv2.resize(grey, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
        m = m @ np.diag([w / grey.shape[1], h / grey.shape[0], 1.0])
        h, w = grey.shape
    crop = cv2.warpAffine(
        grey, m, (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    # keep only crop pixels that map inside the image, so fill never counts as face
    x0, x1 = (max(0, math.ceil(m[0, 2])), min(CROP_SIZE, math.floor(m[0, 0] * (w - 1) + m[0, 2]) + 1))
    y0, y1 = (max(0, math.ceil(m[1, 2])), min(CROP_SIZE, math.floor(m[1, 1] * (h - 1) + m[1, 2]) + 1))
    return crop[y0:y1, x0:x1].astype(np.float32)


def blur_to_score(blur: float) -> float:
    lo, hi = math.log(BLUR_VAR_BLURRED), math.log(BLUR_VAR_SHARP)
    return float(np.clip((hi - math.log(max(blur, 1e-6))) / (hi - lo), 0.0, 1.0))


def _blur(crop: np.ndarray) -> float:
    if crop.shape[0] < 8 or crop.shape[1] < 8:
        return 0.0
    std = float(crop.std())
    if std < 1.0:  # flat: no detail at all
        return 0.0
    lap = cv2.Laplacian((crop - crop.mean()) * (CONTRAST_NORM / std), cv2.CV_32F, ksize=3)
    return float(lap[1:-1, 1:-1].var())  # the outermost ring sees the replicated border


def _border_fraction(face: Face, width: int, height: int) -> float:
    b = face.box
    area = b.width * b.height
    if area <= 0:
        return 1.0
    inside = max(0.0, min(b.x2, width) - max(b.x1, 0.0)) * max(0.0, min(b.y2, height) - max(b.y1, 0.0))
    return float(np.clip(1.0 - inside / area, 0.0, 1.0))


def measure_quality(image_bgr: np.ndarray, face: Face) -> QualityMeasures:
    """Measures of one detected face in a BGR (or grey) uint8 image."""
    if not isinstance(image_bgr, np.ndarray) or image_bgr.ndim not in (2, 3) or image_bgr.size == 0:
        raise InputError("quality needs a non-empty HxW or HxWx3 image array", code="invalid_image")
    grey = image_bgr if image_bgr.ndim == 2 else cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
    crop = _crop(grey, face)
    has_pixels = crop.size > 0
    pose = estimate_pose(face.keypoints)
    blur = _blur(crop) if has_pixels else 0.0
    return QualityMeasures(
        size_px=float(min(face.box.width, face.box.height)),
        blur=blur,
        blur_score=blur_to_score(blur),
        yaw=pose.yaw,
        pitch=pose.pitch,
        roll=pose.roll,
        brightness=float(crop.mean()) if has_pixels else 0.0,
        contrast=float(crop.std()) if has_pixels else 0.0,
        confidence=float(face.score),
        border_fraction=_border_fraction(face, grey.shape[1], grey.shape[0]),
        pose_residual=pose.residual,
    )


@dataclass(frozen=True)
class _Check:
    reason: str
    measure: str
    bound: str
    higher_is_better: bool
    absolute: bool = False  # compare |value| (angles)
    best: float | None = None  # best reachable value (signed like the comparison), caps the score ramp


_CHECKS = (
    _Check("face_too_small", "size_px", "min_size_px", True),
    _Check("too_blurry", "blur_score", "max_blur_score", False, best=0.0),
    _Check("pose_yaw", "yaw", "max_yaw", False, absolute=True, best=0.0),
    _Check("pose_pitch", "pitch", "max_pitch", False, absolute=True, best=0.0),
    _Check("pose_roll", "roll", "max_roll", False, absolute=True, best=0.0),
    _Check("too_dark", "brightness", "min_brightness", True),
    _Check("too_bright", "brightness", "max_brightness", False),
    _Check("low_contrast", "contrast", "min_contrast", True),
    _Check("low_confidence", "confidence", "min_confidence", True, best=1.0),
    _Check("cut_by_border", "border_fraction", "max_border_fraction", False, best=0.0),
)
REASONS = tuple(c.reason for c in _CHECKS)


def _signed(check: _Check, value: float) -> float:
    """The value on a higher-is-better axis."""
    value = abs(value) if check.absolute else value
    return value if check.higher_is_better else -value


def _passes(check: _Check, measures: QualityMeasures, bounds: QualityThresholds) -> bool:
    return _signed(check, getattr(measures, check.measure)) >= _signed(check, getattr(bounds, check.bound))


def _quality(check: _Check, measures: QualityMeasures, levels: dict[str, QualityThresholds]) -> float:
    """0..1 ramp through the LOW / NORMAL / HIGH bounds at 0.25 / 0.5 / 0.75, extended linearly to 0 and 1,
    so that a measure passes level L exactly when its quality reaches L's anchor."""
    low, normal, high = (_signed(check, getattr(levels[k], check.bound)) for k in ("LOW", "NORMAL", "HIGH"))
    xp = np.array([2 * low - normal, low, normal, high, 2 * high - normal])
    if check.best is not None:
        best = check.best if check.higher_is_better else -check.best
        xp[4] = min(xp[4], best)
    xp = np.maximum.accumulate(xp) + np.arange(5) * 1e-9  # custom levels may be unordered or equal
    value = _signed(check, getattr(measures, check.measure))
    return float(np.interp(value, xp, [0.0, 0.25, 0.5, 0.75, 1.0]))


def evaluate_quality(
    measures: QualityMeasures, level: str, levels: dict[str, QualityThresholds] | None = None
) -> QualityReport:
    """Verdict at `level` (NONE, LOW, NORMAL, HIGH). NONE never fails; the score is computed for every level
    from the same LOW / NORMAL / HIGH bounds, so it does not depend on `level`."""
    levels = QUALITY_LEVELS if levels is None else levels
    if level not in LEVELS:
        raise InputError(
            f"quality level must be one of {', '.join(LEVELS)}, got {level!r}", code="invalid_quality_level"
        )
    missing = {"LOW", "NORMAL", "HIGH"} - set(levels)
    if missing:
        raise InputError(f"quality levels {sorted(missing)} are not configured", code="invalid_quality_level")
    score = min(_quality(c, measures, levels) for c in _CHECKS)
    reasons: tuple[str, ...] = ()
    if level != "NONE":
        reasons = tuple(c.reason for c in _CHECKS if not _passes(c, measures, levels[level]))
    return QualityReport(score=score, reasons=reasons, measures=measures)


def posture(measures: QualityMeasures) -> dict[str, float]:
    """JD faceCompare's `posture` object: yaw, pitch, roll in degrees, two decimals."""
    return {"yaw": round(measures.yaw, 2), "pitch": round(measures.pitch, 2), "roll": round(measures.roll, 2)}


def is_valid_posture(
    measures: QualityMeasures, level: str = "NORMAL", levels: dict[str, QualityThresholds] | None = None
) -> bool:
    """JD's `isValidPosture`: every angle within the pose bounds of `level` (NORMAL by default)."""
    levels = QUALITY_LEVELS if levels is None else levels
    if level not in levels:
        raise InputError(f"no quality level {level!r} for posture", code="invalid_quality_level")
    bounds = levels[level]
    return (
        abs(measures.yaw) <= bounds.max_yaw
        and abs(measures.pitch) <= bounds.max_pitch
        and abs(measures.roll) <= bounds.max_roll
    )


def jd_blur_score(measures: QualityMeasures) -> float:
    """JD's `blurScore`, whose documentation says higher = sharper: 1 - blur_score, two decimals."""
    return round(1.0 - measures.blur_score, 2)
