"""Head pose (yaw, pitch, roll in degrees) from the 6 BlazeFace keypoints.

Method: a scaled-orthographic fit of a generic 3D model of the 6 keypoints. Faces are small in the frame, so
perspective adds little; orthography needs no focal-length guess and has a closed form. The 2x3 affine map
taking the centred 3D model onto the centred keypoints is solved by least squares, then projected onto the
nearest scaled rotation (equal singular values); the third axis is the cross product of the first two.

The 3D model is not taken from a face atlas: it was recovered from BlazeFace's own keypoints on 1990 LFW
photos (plus their mirror images) by rank-3 factorisation (Tomasi-Kanade with metric constraints), then
rotated about X so that the LFW median face projects frontal. So it encodes where this detector puts its
"ears" and "eyes", not where anatomy says they are. Units: inter-eye distance 64 (about millimetres).

Conventions (camera frame: x to the image right, y down, z away from the camera), for an unmirrored image:
  yaw   > 0  the subject turned to their own left (nose points to the image right);
  pitch > 0  the subject looks up (chin up);
  roll  > 0  the face is rotated counter-clockwise as displayed (head tilted to the subject's right
             shoulder); rotating an image with cv2.getRotationMatrix2D(angle=+a) adds a to roll.
A mirrored image flips the signs of yaw and roll and keeps pitch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# X toward the subject's left, Y down, Z into the head; origin at the nose tip. KEYPOINT_NAMES order.
FACE_MODEL_3D = np.array(
    [
        [-32.0, -38.3, 47.3],  # right_eye
        [32.0, -38.3, 47.3],  # left_eye
        [0.0, 0.0, 0.0],  # nose_tip
        [0.0, 32.2, 24.1],  # mouth
        [-65.8, -22.9, 119.1],  # right_ear
        [65.8, -22.9, 119.1],  # left_ear
    ],
    np.float64,
)


@dataclass(frozen=True)
class Pose:
    yaw: float
    pitch: float
    roll: float
    residual: float  # RMS fit error / inter-eye distance; large = keypoints unlike a face


def rotation_from_keypoints(keypoints: np.ndarray) -> tuple[np.ndarray, float]:
    """Rotation (3x3, model -> camera) and RMS residual (fraction of the fitted inter-eye distance)."""
    pts = np.asarray(keypoints, np.float64).reshape(-1, 2)
    if pts.shape != (len(FACE_MODEL_3D), 2) or not np.all(np.isfinite(pts)):
        raise ValueError(f"expected {len(FACE_MODEL_3D)} finite keypoints, got shape {pts.shape}")
    model = FACE_MODEL_3D - FACE_MODEL_3D.mean(0)
    image = pts - pts.mean(0)
    affine, *_ = np.linalg.lstsq(model, image, rcond=None)  # (3, 2): image ~= model @ affine
    u, sig, vt = np.linalg.svd(affine.T, full_matrices=False)  # affine.T = u diag(sig) vt, (2,3)
    scale = float(sig.mean())
    rows = u @ vt  # two orthonormal rows: camera x and y axes expressed in the model frame
    rot = np.vstack([rows, np.cross(rows[0], rows[1])])
    fitted = scale * model @ rows.T
    eye_dist = scale * float(np.linalg.norm(FACE_MODEL_3D[1] - FACE_MODEL_3D[0]))
    rms = float(np.sqrt(((fitted - image) ** 2).sum(1).mean()))
    return rot, rms / max(eye_dist, 1e-9)


def angles_from_rotation(rot: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees with the module's conventions."""
    forward = -rot[:, 2]  # the face's outward normal (model -Z) in camera coordinates
    yaw = math.degrees(math.atan2(forward[0], -forward[2]))
    pitch = math.degrees(math.atan2(-forward[1], math.hypot(forward[0], forward[2])))
    roll = math.degrees(math.atan2(-rot[1, 0], rot[0, 0]))  # image angle of the model X axis, CCW positive
    return yaw, pitch, roll


def estimate_pose(keypoints: np.ndarray) -> Pose:
    rot, residual = rotation_from_keypoints(keypoints)
    yaw, pitch, roll = angles_from_rotation(rot)
    return Pose(yaw, pitch, roll, residual)
