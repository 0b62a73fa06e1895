"""Face alignment: turn a detected face into the chip an embedder expects.

Methods (chosen per model in the manifest's `align` entry):
  box        square crop around the detector box, `margin` of the box side added on each side (FaceNet's
             CASIA weights were trained on box crops);
  keypoints  similarity transform (rotation, uniform scale, shift) taking the detector keypoints named in
             `points` onto `template` (coordinates in 0..1 of the chip), which removes in-plane head roll;
  regressed-box  the box another detector would have drawn, predicted linearly from the BlazeFace box and
             keypoints (`coef`, fitted at build time), grown by `margin` of its width and squeezed into the
             chip: FaceNet's CASIA weights were trained on MTCNN boxes cropped this way.
  mesh       (spec `align_mesh`) a similarity transform taking face-mesh points (MediaPipe indices in
             `points`) onto `template`: the embedder gets them from agent/inference/mesh.py.
Everything is one affine warp, so faces at the image border get constant (black) fill, never an exception.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from agent.types import KEYPOINT_NAMES, Face


def box_transform(
    face: Face, size: int, margin: float, offset: tuple[float, float] = (0.0, 0.0), aspect: float = 1.0
) -> np.ndarray:
    """2x3 affine mapping a crop around the face box onto a size x size chip. The crop is centred on the box
    centre moved by `offset` (fractions of the box side), `margin` of the side wider on each side, and
    `aspect` times as tall as wide (squeezed into the square chip, as detectors with tall boxes did in
    training)."""
    cx, cy = face.box.center
    base = max(face.box.width, face.box.height)
    cx, cy = cx + offset[0] * base, cy + offset[1] * base
    side = base * (1.0 + 2.0 * margin)
    sx = size / max(side, 1e-6)
    sy = sx / aspect
    return np.array([[sx, 0.0, size / 2 - sx * cx], [0.0, sy, size / 2 - sy * cy]], np.float64)


def box_features(face: Face) -> np.ndarray:
    """1, box width and height, and the 6 keypoints, relative to the box centre in units of the box side."""
    cx, cy = face.box.center
    side = max(face.box.width, face.box.height, 1e-6)
    kps = (np.asarray(face.keypoints, np.float64) - (cx, cy)) / side
    return np.concatenate([[1.0, face.box.width / side, face.box.height / side], kps.ravel()])


def predicted_box(face: Face, coef: np.ndarray) -> tuple[float, float, float, float]:
    """The box (x1, y1, x2, y2, image pixels) `coef` predicts: features @ coef, in box sides around the
    detector box's centre."""
    cx, cy = face.box.center
    side = max(face.box.width, face.box.height, 1e-6)
    d = box_features(face) @ coef
    return cx + d[0] * side, cy + d[1] * side, cx + d[2] * side, cy + d[3] * side


def regressed_box_transform(face: Face, size: int, coef: np.ndarray, margin: float) -> np.ndarray:
    """2x3 affine: the predicted box, `margin` of its width added in total to both sides, onto a size x size
    chip."""
    x1, y1, x2, y2 = predicted_box(face, coef)
    grow = margin * max(x2 - x1, 1e-6) / 2
    x1, y1, x2, y2 = x1 - grow, y1 - grow, x2 + grow, y2 + grow
    sx, sy = size / max(x2 - x1, 1e-6), size / max(y2 - y1, 1e-6)
    return np.array([[sx, 0.0, -sx * x1], [0.0, sy, -sy * y1]], np.float64)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama, no reflection) taking points `src` (N,2) onto `dst` (N,2)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = (s0**2).sum() / len(src)
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / max(var_s, 1e-12)
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def keypoint_transform(face: Face, size: int, points: list[str], template: list[list[float]]) -> np.ndarray:
    idx = [KEYPOINT_NAMES.index(p) for p in points]
    return similarity_transform(face.keypoints[idx], np.asarray(template, np.float64) * size)


def chip_transform(face: Face, spec: dict[str, Any]) -> np.ndarray:
    size = int(spec["size"])
    method = spec["method"]
    if method == "box":
        return box_transform(
            face,
            size,
            float(spec.get("margin", 0.0)),
            tuple(spec.get("offset", (0.0, 0.0))),
            float(spec.get("aspect", 1.0)),
        )
    if method == "regressed-box":
        coef = np.asarray(spec["coef"], np.float64)
        return regressed_box_transform(face, size, coef, float(spec["margin"]))
    if method in ("keypoints", "dlib-chip"):
        return keypoint_transform(face, size, spec["points"], spec["template"])
    raise ValueError(f"unknown alignment method {method!r}")


def mesh_transform(points: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """2x3 similarity taking the face-mesh points (468, 2+) named by index in `spec["points"]` onto the
    template (`align_mesh` in the manifest): many points, so less jitter than 4 detector keypoints."""
    idx = [int(i) for i in spec["points"]]
    return similarity_transform(
        np.asarray(points, np.float64)[idx, :2], np.asarray(spec["template"], np.float64) * int(spec["size"])
    )


def align(bgr: np.ndarray, face: Face, spec: dict[str, Any]) -> np.ndarray:
    """The aligned BGR chip (size x size) for `face`."""
    return warp(bgr, chip_transform(face, spec), int(spec["size"]))


def warp(bgr: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """`bgr` through the 2x3 affine `m` into a size x size chip."""
    # Downscaling by more than 2x with bilinear aliases; area-average first for large faces.
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale < 0.5:
        factor = int(1.0 / scale) // 2 * 2 or 1
        if factor >= 2:
            small = cv2.resize(
                bgr,
                (max(1, bgr.shape[1] // factor), max(1, bgr.shape[0] // factor)),
                interpolation=cv2.INTER_AREA,
            )
            fx = bgr.shape[1] / small.shape[1]
            fy = bgr.shape[0] / small.shape[0]
            m = m @ np.array([[fx, 0, 0], [0, fy, 0], [0, 0, 1]], np.float64)
            bgr = small
    return cv2.warpAffine(bgr, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
