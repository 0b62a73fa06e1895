"""Fit where the engine's BlazeFace keypoints must land in an embedder's chip, from the model's own chips.

dlib's ResNet was trained on dlib's 5-point chips (150x150, padding 0.25), which dlib builds from its own
landmark predictor. The agent has no dlib at run time, so it aligns with BlazeFace keypoints instead: we take
dlib's chips of real faces, run BlazeFace on each chip, and average where the eyes, nose tip and mouth land.
That average is the template the run-time similarity transform maps onto. Build time only (needs dlib).

Also reports how close the engine's chips come to dlib's own: mean absolute pixel difference and the
descriptor distance between the two chips of each face.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

POINTS = ["right_eye", "left_eye", "nose_tip", "mouth"]


def _detector(models_dir: Path):  # noqa: ANN202
    from agent.config import DetectorConfig, OpenVINORuntimeConfig
    from agent.inference.detector import BlazeFaceDetector
    from agent.inference.manifest import Manifest
    from agent.inference.runtime import open_session

    info = Manifest(models_dir).info("blazeface-full", "fp32", "openvino")
    return BlazeFaceDetector(info, open_session(info.files, OpenVINORuntimeConfig()), DetectorConfig())


def dlib_chips(paths: list[Path], count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(original BGR image, dlib 150x150 chip as BGR) for the central face of up to `count` images."""
    import cv2
    import dlib
    import face_recognition_models as frm

    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    out = []
    for p in paths:
        bgr = cv2.imread(str(p))
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        rects = det(rgb, 1)
        if not rects:
            continue
        h, w = rgb.shape[:2]
        rect = min(rects, key=lambda r: (r.center().x - w / 2) ** 2 + (r.center().y - h / 2) ** 2)
        chip = dlib.get_face_chip(rgb, sp(rgb, rect), size=150, padding=0.25)
        out.append((bgr, np.ascontiguousarray(chip[..., ::-1])))
        if len(out) >= count:
            break
    return out


def fit_template(models_dir: Path, lfw_dir: Path, count: int = 600) -> dict:
    import cv2

    from agent.types import KEYPOINT_NAMES

    paths = sorted((lfw_dir / "images").glob("*/*.jpg"))
    random.Random(7).shuffle(paths)
    detector = _detector(models_dir)
    idx = [KEYPOINT_NAMES.index(p) for p in POINTS]
    pts = []
    pairs = dlib_chips(paths, count)
    pad = 75
    for _, chip in pairs:
        # A chip is nearly all face; the detector was trained on faces with context around them.
        canvas = cv2.copyMakeBorder(chip, pad, pad, pad, pad, cv2.BORDER_CONSTANT)
        faces = detector.detect(canvas)
        if len(faces) == 1:
            pts.append((faces[0].keypoints[idx] - pad) / 150.0)
    arr = np.array(pts)
    template = arr.mean(0)
    spread = float(np.sqrt(((arr - template) ** 2).sum(-1)).mean() * 150)
    print(f"  template from {len(arr)} dlib chips; mean keypoint spread {spread:.2f} px at 150")
    return {
        "method": "dlib-chip",
        "size": 150,
        "points": POINTS,
        "template": np.round(template, 5).tolist(),
        "fitted_on": f"{len(arr)} {lfw_dir.name} faces",
    }


def chip_agreement(models_dir: Path, lfw_dir: Path, spec: dict, count: int = 100) -> dict:
    """How close the engine's chips are to dlib's: pixels and the dlib descriptor of each."""
    import dlib
    import face_recognition_models as frm

    from agent.evaluation.lfw import central_face
    from agent.inference.align import align

    rec = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    paths = sorted((lfw_dir / "images").glob("*/*.jpg"))
    random.Random(99).shuffle(paths)
    detector = _detector(models_dir)
    diffs, dists = [], []
    for bgr, dchip in dlib_chips(paths, count):
        face = central_face(detector.detect(bgr), bgr.shape[1], bgr.shape[0])
        if face is None:
            continue
        ours = align(bgr, face, spec)
        diffs.append(np.abs(ours.astype(float) - dchip).mean())
        a = np.array(rec.compute_face_descriptor(np.ascontiguousarray(ours[..., ::-1])))
        b = np.array(rec.compute_face_descriptor(np.ascontiguousarray(dchip[..., ::-1])))
        dists.append(np.linalg.norm(a - b))
    res = {
        "faces": len(diffs),
        "mean_abs_pixel_diff": round(float(np.mean(diffs)), 2),
        "descriptor_distance_median": round(float(np.median(dists)), 4),
        "descriptor_distance_p90": round(float(np.percentile(dists, 90)), 4),
    }
    print(f"  engine chips vs dlib chips: {res} (dlib's same-person distance threshold is 0.6)")
    return res


# Face-mesh points of the mesh alignment (MediaPipe indices): both corners of each eye and the bottom of the
# nose, the points dlib's own 5-point chips are built from. Measured against other sets on lfw-devtrain
# (scripts/align_experiment.py): adding the mouth corners, the brows and lids, or all 468 points did worse.
MESH_POINTS = [33, 133, 263, 362, 2]


def fit_mesh_template(models_dir: Path, lfw_dir: Path, count: int = 2000) -> dict:
    """The `align_mesh` spec: where the mesh points land, on average, in the chips the keypoint template cuts
    (so the mesh chips keep the framing fitted to dlib's chips above, with the mesh's steadier points), and
    where the detector's box and keypoints land in the mesh chips (`chip_face`: to align a stored chip again).
    No dlib needed: the engine's detector, keypoint alignment and face mesh only."""
    from agent.evaluation.calibrate import make_engine
    from agent.evaluation.lfw import central_face
    from agent.inference.align import chip_transform, similarity_transform
    from agent.inference.mesh import open_face_mesh

    engine = make_engine(models_dir, "dlib-resnet-v1", "fp32", "openvino", landmarks="detector")
    mesh = open_face_mesh(engine.config)
    spec = engine.embedder.align_spec
    size = int(spec["size"])
    paths = sorted((lfw_dir / "images").glob("*/*.jpg"))
    random.Random(11).shuffle(paths)
    faces, points = [], []
    for p in paths:
        img = engine.load(p.read_bytes())
        face = central_face(engine.detector.detect(img.pixels), img.width, img.height)
        if face is None:
            continue
        faces.append(face)
        points.append(mesh.landmarks(img.pixels, face).points[MESH_POINTS, :2].astype(np.float64))
        if len(faces) >= count:
            break

    def through(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
        return xy @ m[:2, :2].T + m[:, 2]

    template = np.mean(
        [through(chip_transform(f, spec), pts) for f, pts in zip(faces, points, strict=True)], axis=0
    )
    boxes, kps, spread = [], [], []
    for f, pts in zip(faces, points, strict=True):
        m = similarity_transform(pts, template)
        spread.append(np.sqrt(((through(m, pts) - template) ** 2).sum(-1)).mean())
        scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
        cx, cy = through(m, np.array(f.box.center))
        hw, hh = f.box.width * scale / 2, f.box.height * scale / 2
        boxes.append([cx - hw, cy - hh, cx + hw, cy + hh])
        kps.append(through(m, np.asarray(f.keypoints, np.float64)))
    print(f"  mesh template from {len(faces)} faces; mean residual {np.mean(spread):.2f} px at {size}")
    return {
        "method": "mesh",
        "size": size,
        "points": MESH_POINTS,
        "template": np.round(template / size, 5).tolist(),
        "chip_face": {
            "box": np.round(np.mean(boxes, 0) / size, 5).tolist(),
            "keypoints": np.round(np.mean(kps, 0) / size, 5).tolist(),
        },
        "fitted_on": f"{len(faces)} {lfw_dir.name} faces (mesh points in the keypoint template's chips)",
    }
