"""Infrared liveness: a phone or tablet screen emits no near infrared; a real face reflects the illuminator.

Evidence from a near-infrared camera beside the colour one (agent/capture/ir.py pairs the two and warps each
IR frame onto the colour pixels with the camera's calibration), for one detected face:

- **presence**: the face's median grey level in IR (the central 60% of its box: eyes, nose, mouth) must reach
  `min_level`. Under the module's IR illuminator skin is bright; a screen's picture is not there at all (LCD
  and OLED panels emit visible light only), so a replayed face is a dark patch (`ir_dark`).
- **a face in IR where colour saw it**: the detector runs on the IR crop around the face and must find a face
  overlapping the colour box by `min_iou` (`ir_no_face`): a bright but faceless patch (a lamp, a warm
  backlight, a misregistered pair) is no evidence.
- no IR frame, or one taken too far in time from the colour frame, is no evidence (`ir_missing`,
  `ir_stale`): the camera's access decision fails closed.

What it does not stop: a print. Paper reflects near infrared and most printed faces stay visible in it, so
IR evidence alone passes prints; depth (agent/gates/depth.py) or the RGB levels stop those. Thresholds were
set on IR frames made from real photos (a grey rendering of the face) and on dark screen patches
(tests/test_ir_liveness.py; docs/liveness.md, "Infrared evidence"): no recorded infrared footage was available
and nothing here has run on a real IR camera.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from agent.gates.depth import DepthCheck
from agent.gates.ir_config import IR_REASONS, IrGateConfig
from agent.types import Box, Face, IrFrame

__all__ = ["IR_REASONS", "IrGateConfig", "ir_check"]
_CENTRE = 0.6  # share of the box (each side) whose median is the face's IR level
_CROP = 2.0  # the IR crop the detector sees, in box sizes around the face
_MIN_DETECT_PX = 128  # crops smaller than this are upscaled: BlazeFace needs some pixels


def _verdict(reasons: tuple[str, ...], level: float | None = None) -> DepthCheck:
    return DepthCheck(not reasons, None, None, None, reasons, sensor="ir", level=level)


def ir_check(
    face: Face,
    ir: IrFrame | None,
    cfg: IrGateConfig,
    detect: Callable[[np.ndarray], list[Face]],
) -> DepthCheck:
    """Is this face present, bright and face-shaped in infrared? (see the module docstring). `detect` is the
    engine's face detector (BGR image -> faces). Never raises on a bad frame: it is `ir_missing`."""
    if ir is None:
        return _verdict(("ir_missing",))
    if ir.skew_s > cfg.max_skew_s:
        return _verdict(("ir_stale",))
    grey = ir.grey
    if grey.ndim != 2 or grey.size == 0:
        return _verdict(("ir_missing",))
    h, w = grey.shape
    b = face.box
    cx, cy = b.center
    hw, hh = 0.5 * _CENTRE * b.width, 0.5 * _CENTRE * b.height
    x0, x1 = max(0, int(cx - hw)), min(w, int(cx + hw) + 1)
    y0, y1 = max(0, int(cy - hh)), min(h, int(cy + hh) + 1)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return _verdict(("ir_missing",))
    level = round(float(np.median(grey[y0:y1, x0:x1])), 1)
    if level < cfg.min_level:
        return _verdict(("ir_dark",), level)
    if not _face_in_ir(grey, b, cfg.min_iou, detect):
        return _verdict(("ir_no_face",), level)
    return _verdict((), level)


def _face_in_ir(grey: np.ndarray, box: Box, min_iou: float, detect: Callable) -> bool:
    h, w = grey.shape
    cx, cy = box.center
    half = 0.5 * _CROP * max(box.width, box.height)
    x0, x1 = max(0, int(cx - half)), min(w, int(cx + half))
    y0, y1 = max(0, int(cy - half)), min(h, int(cy + half))
    crop = grey[y0:y1, x0:x1]
    if crop.shape[0] < 8 or crop.shape[1] < 8:
        return False
    scale = max(1.0, _MIN_DETECT_PX / min(crop.shape))
    if scale > 1.0:
        crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    found = detect(cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_GRAY2BGR))
    for f in found:
        fb = f.box
        mapped = Box(fb.x1 / scale + x0, fb.y1 / scale + y0, fb.x2 / scale + x0, fb.y2 / scale + y0)
        if mapped.iou(box) >= min_iou:
            return True
    return False
