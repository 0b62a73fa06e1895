"""Depth liveness: a face has centimetres of relief; a flat, bent or creased print or screen does not.

Evidence from a depth camera whose SDK registered depth to the colour pixels (agent/capture/realsense.py),
for one detected face (box + 6 keypoints):

- **relief**: the nose tip against the surface of the face around it. A quadric z = f(u, v) (u, v in units
  of the eye distance, centred on the nose) is fitted robustly to the depth in a ring 0.45-1.3 eye
  distances around the nose (cheeks, eye sockets, forehead, chin: no nose); relief = that surface at the nose
  minus the measured nose depth. A plane at any tilt, and a sheet bent about any axis (a cylinder), is a
  quadric: its relief is 0 up to the sensor's noise. A real nose stands out of the fitted face surface.
  Also, on every line through the nose (24 directions) the two ends, 0.6 eye distances out, must lie 4 mm
  behind it on average: a sheet folded along one crease through the nose has relief, but along the crease
  it is straight, however tilted. Not stopped: a sheet folded into a point at the nose or with a bump
  behind it (measured: scripts/depth_eval.py), and masks.
- **physical scale**: eye distance in mm = eye distance in pixels x nose depth / focal length. A face on a
  phone held at arm's length is a few centimetres wide; adults' eye centres are 54-74 mm apart.
- samples farther than `max_spread_mm` from the nose depth (background, hair, holes) are ignored; too few
  valid samples, or depth taken too far in time from the colour frame, is no evidence (fail closed).

Thresholds were set on depth rendered from the face mesh of real photos and on planes, bent and creased sheets
(tests/test_depth_liveness.py; docs/liveness.md, "Depth evidence"): no recorded depth footage of real faces
or attacks was available, and nothing here has run on a real depth camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.gates.depth_config import DEPTH_REASONS, DepthGateConfig
from agent.types import DepthFrame, Face

__all__ = ["DEPTH_REASONS", "DepthCheck", "DepthGateConfig", "depth_check"]
_RING = (0.45, 1.3)  # ring around the nose, in eye distances
_NOSE_R = 0.12


@dataclass(frozen=True)
class DepthCheck:
    """One face's evidence from the camera's liveness sensor: depth (this module) or infrared
    (agent/gates/ir.py, `sensor` "ir", with the face's IR `level` and no depth measures)."""

    passed: bool
    relief_mm: float | None  # None when there was no usable depth
    eye_mm: float | None
    distance_mm: float | None
    reasons: tuple[str, ...]  # DEPTH_REASONS (IR_REASONS for "ir"); empty when passed
    sensor: str = "depth"
    level: float | None = None  # infrared: the face's median grey level 0..255


def _missing(reason: str = "depth_missing") -> DepthCheck:
    return DepthCheck(False, None, None, None, (reason,))


def _fit_quadric(u: np.ndarray, v: np.ndarray, z: np.ndarray) -> np.ndarray | None:
    """Coefficients of z = c0 + c1 u + c2 v + c3 u^2 + c4 v^2 + c5 uv, refitted without outliers."""
    a = np.column_stack([np.ones_like(u), u, v, u * u, v * v, u * v])
    keep = np.ones(len(z), bool)
    coef = None
    for _ in range(3):
        if keep.sum() < 24:
            return None
        coef, *_ = np.linalg.lstsq(a[keep], z[keep], rcond=None)
        res = z - a @ coef
        mad = float(np.median(np.abs(res[keep]))) + 1e-3
        keep = np.abs(res) <= 3.0 * 1.4826 * mad + 1.0
    return coef


def depth_check(face: Face, depth: DepthFrame | None, cfg: DepthGateConfig) -> DepthCheck:
    """Is there a face-shaped relief where this face is? (see the module docstring). Never raises: depth it
    cannot use is `depth_missing` (no evidence), so a bad frame cannot stop the recognition thread."""
    if depth is None:
        return _missing()
    try:
        return _check(face, depth, cfg)
    except (ValueError, ArithmeticError, np.linalg.LinAlgError, IndexError):
        return _missing()


def _check(face: Face, depth: DepthFrame, cfg: DepthGateConfig) -> DepthCheck:
    if depth.skew_s > cfg.max_skew_s:
        return _missing("depth_stale")
    img = depth.depth_mm
    if img.ndim != 2 or depth.fx <= 0 or depth.fy <= 0:
        return _missing()
    (rx, ry), (lx, ly) = face.keypoint("right_eye"), face.keypoint("left_eye")
    nx, ny = face.keypoint("nose_tip")
    eye_px = float(np.hypot(lx - rx, ly - ry))
    if eye_px < 8:
        return _missing()
    h, w = img.shape
    half = int(np.ceil(_RING[1] * eye_px))
    x0, x1 = max(0, int(nx) - half), min(w, int(nx) + half + 1)
    y0, y1 = max(0, int(ny) - half), min(h, int(ny) + half + 1)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return _missing()
    step = max(1, int(np.sqrt((x1 - x0) * (y1 - y0) / 4000)))  # a few thousand samples at most
    ys, xs = np.mgrid[y0:y1:step, x0:x1:step]
    z = img[ys, xs].astype(np.float64)
    u, v = (xs - nx) / eye_px, (ys - ny) / eye_px
    r = np.hypot(u, v)
    nose = z[(r <= _NOSE_R) & (z > 0)]
    if len(nose) < 3:
        return _missing()
    z_nose = float(np.median(nose))
    if not cfg.range_mm[0] <= z_nose <= cfg.range_mm[1]:
        return _missing()
    ring = (r >= _RING[0]) & (r <= _RING[1])
    valid = ring & (z > 0) & (np.abs(z - z_nose) <= cfg.max_spread_mm)
    if ring.sum() == 0 or valid.sum() / ring.sum() < cfg.min_valid:
        return _missing()
    coef = _fit_quadric(u[valid], v[valid], z[valid])
    if coef is None:
        return _missing()
    relief = float(coef[0] - z_nose)  # the fitted surface at the nose, minus the nose: > 0 = nose in front
    eye_mm = eye_px * z_nose / (0.5 * (depth.fx + depth.fy))
    reasons = []
    if relief < cfg.min_relief_mm or _level_line(img, face, eye_px, z_nose, cfg) < _RECEDE_MM:
        reasons.append("depth_flat")
    if not cfg.eye_mm[0] <= eye_mm <= cfg.eye_mm[1]:
        reasons.append("depth_scale")
    return DepthCheck(not reasons, round(relief, 2), round(eye_mm, 1), round(z_nose, 1), tuple(reasons))


# Every line through the nose, 7.5 degrees apart, sampled 0.6 eye distances to both sides: on a face the two
# ends of every line lie behind the nose tip on average (cheeks, brow, lip, the diagonals between them).
_LINES = 24
_LINE_R = 0.6
_RECEDE_MM = 4.0


def _level_line(img: np.ndarray, face: Face, eye_px: float, z_nose: float, cfg: DepthGateConfig) -> float:
    """The least recession over all lines through the nose: per line, the mean depth of its two ends minus
    the nose's (the mean cancels any tilt of the whole). A sheet folded along one crease through the nose has
    relief, but along the crease it is straight (about 0 mm); on a face every line bends back on average
    (a protruding lip or the near cheek of a turned face is level on one side only)."""
    (rx, ry), (lx, ly) = face.keypoint("right_eye"), face.keypoint("left_eye")
    nx, ny = face.keypoint("nose_tip")
    rad = max(1, int(_NOSE_R * eye_px))
    h, w = img.shape
    base = np.arctan2(ly - ry, lx - rx)  # the eye line's angle in the image

    def behind(angle: float) -> float | None:
        px = int(round(nx + np.cos(angle) * _LINE_R * eye_px))
        py = int(round(ny + np.sin(angle) * _LINE_R * eye_px))
        patch = img[max(0, py - rad) : min(h, py + rad + 1), max(0, px - rad) : min(w, px + rad + 1)]
        vals = patch[(patch > 0) & (np.abs(patch - z_nose) <= cfg.max_spread_mm)]
        return float(np.median(vals)) - z_nose if len(vals) >= 3 else None

    least = np.inf
    for k in range(_LINES):
        angle = base + np.pi * k / _LINES
        ends = [behind(angle), behind(angle + np.pi)]
        if any(e is None for e in ends):
            return -np.inf  # no depth at an end: the shape cannot be checked
        least = min(least, 0.5 * (ends[0] + ends[1]))
    return float(least)
