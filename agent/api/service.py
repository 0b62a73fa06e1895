"""What the API families share at run time: the engine behind its gate, the gallery and matcher, the score
map, the quality gate, the single-image liveness check and the face_token cache."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from agent.api.auth import Authenticator
from agent.api.common import ApiError, EngineGate, PixelBudget, TokenCache
from agent.api.config import ApiConfig
from agent.gallery import Gallery, Matcher, NewFace, ScoreMap
from agent.gates.liveness import LivenessReport, evaluate_liveness, passive_liveness
from agent.gates.quality import (
    QualityMeasures,
    evaluate_quality,
    is_valid_posture,
    jd_blur_score,
    measure_quality,
    posture,
)
from agent.types import Face, FaceEmbedding, Image

log = logging.getLogger(__name__)

LEVELS = ("NONE", "LOW", "NORMAL", "HIGH")


class QualityGate:
    """The quality gate (agent.gates.quality) as the API families use it."""

    def measure(self, image: Image, face: Face) -> QualityMeasures:
        return measure_quality(image.pixels, face)

    def reasons(self, measures: QualityMeasures, level: str) -> list[str]:
        """Why the face fails `level` (empty: it passes). NONE never fails."""
        return list(evaluate_quality(measures, level).reasons)

    def score(self, measures: QualityMeasures) -> float:
        return evaluate_quality(measures, "NONE").score

    def posture(self, measures: QualityMeasures) -> dict[str, float]:
        return dict(posture(measures))

    def valid_posture(self, measures: QualityMeasures, level: str = "NORMAL") -> bool:
        return bool(is_valid_posture(measures, level))

    def jd_blur_score(self, measures: QualityMeasures) -> float:
        """JD's blurScore: higher = sharper (the gate's blur_score is higher = blurrier)."""
        return float(jd_blur_score(measures))


@dataclass
class ApiContext:
    config: ApiConfig
    engine: Any  # FaceEngine (typed loosely so tests of routing need no models)
    gallery: Gallery
    matcher: Matcher
    scores: ScoreMap
    gate: EngineGate
    auth: Authenticator
    tokens: TokenCache
    quality: QualityGate
    decodes: PixelBudget  # decoded request pixels alive at once, shared by every family

    @property
    def model_id(self) -> str:
        return self.matcher.model_id

    def load(self, image: Image | bytes) -> Image:
        return self.engine.load(image)

    def analyze(self, image: Image, max_faces: int | None, keep_chips: bool = False) -> list[FaceEmbedding]:
        """Detect (largest first) and embed, behind the engine gate."""
        return self.gate.run(self.engine.analyze, image, max_faces, keep_chips)

    def analyze_in_box(self, image: Image, box: tuple[int, int, int, int]) -> FaceEmbedding | None:
        """Face++ face_rectangle: detect only inside (top, left, width, height) plus a margin for the
        detector's context; take the largest face whose centre lies in the box."""
        top, left, width, height = box
        h, w = image.height, image.width
        mx, my = width // 2, height // 2
        x1, y1 = max(0, left - mx), max(0, top - my)
        x2, y2 = min(w, left + width + mx), min(h, top + height + my)
        if x2 - x1 < 8 or y2 - y1 < 8:
            return None
        crop = Image(np.ascontiguousarray(image.pixels[y1:y2, x1:x2]), image.source_format)
        for emb in self.analyze(crop, None):
            cx, cy = emb.face.box.center
            if left <= cx + x1 <= left + width and top <= cy + y1 <= top + height:
                return emb
        return None

    def measure(self, image: Image, face: Face) -> Any:
        return self.gate.run(self.quality.measure, image, face)

    def liveness(self, image: Image, face: Face, level: str) -> LivenessReport:
        """Single-image liveness verdict at `level` (passive cues only: see docs/liveness.md for what one
        image can and cannot prove). Runs behind the engine gate: it is CPU work of the same order."""
        report = self.gate.run(passive_liveness, image.pixels, face)
        return evaluate_liveness(report, level, single_image=True)

    def enrol(
        self,
        group_id: str,
        outer_id: str,
        image: Image,
        user_info: str | None = None,
        quality_level: str = "NONE",
    ) -> tuple[FaceEmbedding, Any]:
        """Enrol the largest face of `image`; returns it with the gallery's FaceRecord."""
        faces = self.analyze(image, 1, keep_chips=True)
        if not faces:
            raise ApiError("no_face", "no face detected in the image")
        emb = faces[0]
        measures = self.measure(image, emb.face)
        failed = self.quality.reasons(measures, quality_level)
        if failed:
            raise ApiError("quality_failed", f"face quality below {quality_level}: {', '.join(failed)}")
        quality = self.quality.score(measures)
        thumb = _thumbnail(emb.chip, self.gallery.config.max_thumbnail_bytes)
        record = self.gallery.add_faces(
            group_id, [NewFace(outer_id, emb.vector, self.model_id, quality, user_info, thumb)]
        )[0]
        return emb, record

    def has_faces(self, group_id: str) -> bool:
        return bool(self.gallery.list_faces(group_id, self.model_id, limit=1))

    def embedding_for_token(self, token: str) -> np.ndarray | None:
        """A face_token is either a recently detected query face or an enrolled face."""
        vec = self.tokens.get(token)
        if vec is not None:
            return vec
        try:
            face = self.gallery.get_face(token)
        except Exception:  # face_not_found, invalid text
            return None
        if face.model_id != self.model_id:
            return None
        return self.gallery.get_embedding(token)


def _thumbnail(chip: np.ndarray | None, max_bytes: int) -> bytes | None:
    if chip is None or max_bytes == 0:
        return None
    ok, buf = cv2.imencode(".jpg", chip, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return bytes(buf) if ok and len(buf) <= max_bytes else None


def roll_degrees(face: Face) -> float:
    """Clockwise tilt of the eye line from horizontal (image y grows downwards)."""
    rx, ry = face.keypoint("right_eye")
    lx, ly = face.keypoint("left_eye")
    return float(np.degrees(np.arctan2(ly - ry, lx - rx)))
