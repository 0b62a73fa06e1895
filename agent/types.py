"""Frozen values passed between parts. Arrays inside are never mutated after construction."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# BlazeFace keypoint order, subject's point of view ("right eye" is on the image's left for a frontal face).
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth", "right_ear", "left_ear")


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in pixels of the original image: x1, y1 inclusive top-left, x2, y2 bottom-right."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x1 + self.x2) / 2.0, (self.y1 + self.y2) / 2.0)

    def as_xywh(self) -> tuple[int, int, int, int]:
        return (round(self.x1), round(self.y1), round(self.width), round(self.height))

    def iou(self, other: Box) -> float:
        ix = max(0.0, min(self.x2, other.x2) - max(self.x1, other.x1))
        iy = max(0.0, min(self.y2, other.y2) - max(self.y1, other.y1))
        inter = ix * iy
        union = self.width * self.height + other.width * other.height - inter
        return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class Face:
    """One detected face: box, detector confidence, keypoints (6x2, KEYPOINT_NAMES order) in image pixels."""

    box: Box
    score: float
    keypoints: np.ndarray = field(repr=False)

    def keypoint(self, name: str) -> tuple[float, float]:
        x, y = self.keypoints[KEYPOINT_NAMES.index(name)]
        return float(x), float(y)


@dataclass(frozen=True)
class FaceEmbedding:
    """A face with its L2-normalised embedding and the id of the model variant that produced it."""

    face: Face
    vector: np.ndarray = field(repr=False)
    model_id: str
    chip: np.ndarray | None = field(default=None, repr=False)  # aligned BGR crop fed to the embedder
    # The face mesh the chip was aligned on (agent/inference/mesh.Mesh), None with detector keypoints: the
    # blink cue reads eye openness from it instead of running the mesh on the same face again.
    mesh: object | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Image:
    """A decoded image: BGR uint8 HxWx3, whatever the source format, EXIF orientation applied."""

    pixels: np.ndarray = field(repr=False)
    source_format: str = "array"

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


@dataclass(frozen=True)
class DepthFrame:
    """A depth image registered to a colour frame's pixels (the depth camera's SDK aligned it), in mm.

    `depth_mm[y, x]` is the distance along the optical axis of what colour pixel (x, y) shows; 0 where the
    sensor has no value. `fx`, `fy` are the colour camera's focal lengths in pixels (physical size from
    pixels). `skew_s` is how far apart in time the depth and the colour frame were taken."""

    depth_mm: np.ndarray = field(repr=False)  # (H, W) float32
    fx: float
    fy: float
    skew_s: float = 0.0


@dataclass(frozen=True)
class IrFrame:
    """A near-infrared image registered to a colour frame's pixels (agent/capture/ir.py warped it with the
    camera's calibration): `grey[y, x]` is what the IR camera sees where colour pixel (x, y) looks.
    `skew_s` is how far apart in time the IR and the colour frame were taken."""

    grey: np.ndarray = field(repr=False)  # (H, W) uint8
    skew_s: float = 0.0
