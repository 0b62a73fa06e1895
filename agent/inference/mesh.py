"""Face mesh (MediaPipe face_landmark, 468 points): the embedder's alignment points (docs/models.md) and the
liveness gate's blink cue.

The model comes from models/ (built by scripts/build_mesh.py through scripts/build_models.py) and is opened
like every other model: manifest facts + agent.inference.runtime.open_session. The crop follows what the
model was trained on: a square around the detector box, 1.5 times its side, rotated so the eyes are level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from agent.config import EngineConfig
from agent.errors import InputError, ModelError
from agent.inference.manifest import Manifest, ModelInfo
from agent.inference.runtime import Session, open_session
from agent.types import Face

ROI_SCALE = 1.5
# Mesh indices (MediaPipe topology) of each eye: outer corner, inner corner, upper lid, lower lid.
RIGHT_EYE = (33, 133, 159, 145)  # subject's right eye (image left for a frontal face)
LEFT_EYE = (263, 362, 386, 374)


@dataclass(frozen=True)
class Mesh:
    points: np.ndarray  # (468, 3): x, y in image pixels, z relative depth in the same pixel scale
    face_probability: float


def eye_openness(points: np.ndarray) -> float:
    """Mean lid gap / eye width of both eyes (about 0.25-0.35 open, below 0.1 closed)."""
    ratios = []
    for outer, inner, upper, lower in (RIGHT_EYE, LEFT_EYE):
        width = np.linalg.norm(points[outer, :2] - points[inner, :2])
        ratios.append(np.linalg.norm(points[upper, :2] - points[lower, :2]) / max(float(width), 1e-6))
    return float(np.mean(ratios))


def open_face_mesh(
    engine: EngineConfig, model: str = "face-mesh", manifest: Manifest | None = None
) -> FaceMesh:
    """The face mesh on the engine's runtime and device, its file checked against the manifest's sha256."""
    manifest = manifest or Manifest(engine.models_dir)
    info = manifest.info(model, "fp32", engine.runtime.kind, engine.verify_checksums)
    return FaceMesh(info, open_session(info.files, engine.runtime))


class FaceMesh:
    def __init__(self, info: ModelInfo, session: Session) -> None:
        if info.kind != "landmarks":
            raise ModelError(f"model {info.name!r} is a {info.kind}, not a landmark model")
        self.info = info
        self._session = session
        self.size = int(info.input["size"][0])
        self._mean = np.array(info.input["mean"], np.float32)
        self._scale = np.array(info.input["scale"], np.float32)
        self._nchw = info.input["layout"] == "NCHW"
        self._out = info.output["landmarks"]
        self._flag = info.output["face_flag"]
        missing = {self._out, self._flag} - set(session.output_names)
        if missing:
            raise ModelError(f"{info.name}: outputs {missing} not in the model ({session.output_names})")

    def roi(self, face: Face) -> np.ndarray:
        """2x3 affine: image -> model input (square, eyes level, ROI_SCALE times the box side)."""
        (rx, ry), (lx, ly) = face.keypoint("right_eye"), face.keypoint("left_eye")
        angle = math.degrees(math.atan2(ly - ry, lx - rx))
        side = max(face.box.width, face.box.height) * ROI_SCALE
        if side <= 1:
            raise InputError("face box too small for the face mesh", code="face_too_small")
        m = cv2.getRotationMatrix2D(face.box.center, angle, self.size / side)
        m[:, 2] += np.array([self.size / 2, self.size / 2]) - np.array(face.box.center)
        return m

    def landmarks(self, image_bgr: np.ndarray, face: Face) -> Mesh:
        m = self.roi(face)
        crop = cv2.warpAffine(image_bgr, m, (self.size, self.size), flags=cv2.INTER_LINEAR)
        x = (crop[..., ::-1].astype(np.float32) - self._mean) * self._scale
        x = x.transpose(2, 0, 1) if self._nchw else x
        out = self._session.run(x[None])
        pts = np.asarray(out[self._out], np.float64).reshape(-1, 3)
        if pts.shape[0] != int(self.info.output["points"]) or not np.all(np.isfinite(pts)):
            raise ModelError(f"{self.info.name}: unusable landmark output of shape {pts.shape}")
        inv = cv2.invertAffineTransform(m)
        xy = pts[:, :2] @ inv[:, :2].T + inv[:, 2]
        z = pts[:, 2] * float(np.sqrt(abs(np.linalg.det(inv[:, :2]))))
        logit = float(np.asarray(out[self._flag]).reshape(-1)[-1])
        return Mesh(np.c_[xy, z].astype(np.float32), 1.0 / (1.0 + math.exp(-logit)))

    def eye_openness(
        self, image_bgr: np.ndarray, face: Face, min_face_probability: float = 0.5
    ) -> float | None:
        """Eye openness of `face`, or None when the mesh does not see a face in the crop (eyes unknown)."""
        mesh = self.landmarks(image_bgr, face)
        if mesh.face_probability < min_face_probability:
            return None
        return eye_openness(mesh.points)
