"""Depth frames for the depth-liveness tests: real faces (the face mesh's relative depth on real photos,
rendered to a registered depth image in mm) and attacks (planes at any tilt, sheets bent about an axis),
with sensor-like noise and holes. No recorded depth footage exists in ../shared/data: these are made here."""

from __future__ import annotations

import cv2
import numpy as np

from agent.types import DepthFrame, Face

EYE_MM = 63.0  # the eye-centre distance the rendered real faces get


def _triangles(xy: np.ndarray, w: int, h: int) -> list[tuple[int, int, int]]:
    sub = cv2.Subdiv2D((0, 0, w, h))
    index = {}
    for i, (x, y) in enumerate(xy):
        if 0 <= x < w and 0 <= y < h:
            sub.insert((float(x), float(y)))
            index[(round(float(x), 2), round(float(y), 2))] = i
    out = []
    for t in sub.getTriangleList():
        pts = [(round(float(t[k]), 2), round(float(t[k + 1]), 2)) for k in (0, 2, 4)]
        if all(p in index for p in pts):
            out.append(tuple(index[p] for p in pts))
    return out


def render(points: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Piecewise-linear interpolation of `values` at image points (Delaunay triangles); 0 outside the hull."""
    h, w = shape
    out = np.zeros((h, w), np.float32)
    for a, b, c in _triangles(points, w, h):
        tri = points[[a, b, c]]
        x0, y0 = np.floor(tri.min(0)).astype(int)
        x1, y1 = np.ceil(tri.max(0)).astype(int)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)
        if x1 < x0 or y1 < y0:
            continue
        ys, xs = np.mgrid[y0 : y1 + 1, x0 : x1 + 1]
        m = np.array(
            [[tri[0, 0] - tri[2, 0], tri[1, 0] - tri[2, 0]], [tri[0, 1] - tri[2, 1], tri[1, 1] - tri[2, 1]]]
        )
        if abs(np.linalg.det(m)) < 1e-9:
            continue
        inv = np.linalg.inv(m)
        l1 = inv[0, 0] * (xs - tri[2, 0]) + inv[0, 1] * (ys - tri[2, 1])
        l2 = inv[1, 0] * (xs - tri[2, 0]) + inv[1, 1] * (ys - tri[2, 1])
        l3 = 1 - l1 - l2
        inside = (l1 >= -1e-6) & (l2 >= -1e-6) & (l3 >= -1e-6)
        z = l1 * values[a] + l2 * values[b] + l3 * values[c]
        out[ys[inside], xs[inside]] = z[inside]
    return out


def focal_for(face: Face, distance_mm: float, eye_mm: float = EYE_MM) -> float:
    """The focal length (px) at which this face's eye distance in pixels is `eye_mm` at `distance_mm`."""
    (rx, ry), (lx, ly) = face.keypoint("right_eye"), face.keypoint("left_eye")
    return float(np.hypot(lx - rx, ly - ry)) * distance_mm / eye_mm


def real_face_depth(
    mesh_points: np.ndarray,
    face: Face,
    shape,
    distance_mm: float = 600.0,
    background_mm: float | None = 1800.0,
) -> tuple[np.ndarray, float]:
    """Depth (mm) of a real face from its mesh: the mesh's relative depth (pixel units, smaller = nearer)
    scaled to mm by the eye distance, the face's centre at `distance_mm`; background wall or no data."""
    fx = focal_for(face, distance_mm)
    mm_per_px = distance_mm / fx
    z = mesh_points[:, 2].astype(np.float64) * mm_per_px
    z = distance_mm + z - float(np.median(z))
    depth = render(mesh_points[:, :2].astype(np.float64), z, shape)
    if background_mm is not None:
        depth[depth == 0] = background_mm
    return depth, fx


def sheet_depth(
    shape,
    fx: float,
    centre: tuple[float, float],
    distance_mm: float,
    *,
    tilt_x: float = 0.0,
    tilt_y: float = 0.0,
    bend_mm: float | None = None,
    bend_axis: str = "vertical",
    fold_deg: float | None = None,
    fold_axis: str = "vertical",
    point_deg: float | None = None,
    bump_mm: float | None = None,
    background_mm: float | None = 1800.0,
    size_mm: float = 220.0,
) -> np.ndarray:
    """Depth of a flat, bent or folded sheet (a print or a phone) around `centre`: tilted by tilt_x (about
    the vertical axis) / tilt_y degrees; bent to a cylinder of radius bend_mm (> 0 bulging towards the
    camera, < 0 away); folded along one crease through the centre (`fold_deg` per side, the crease towards
    the camera; `fold_axis` vertical / horizontal / diagonal); folded into a point at the centre
    (`point_deg`); or pushed out by a bump `bump_mm` high (a wad behind the nose, 20 mm wide); `size_mm`
    wide, background elsewhere."""
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    x_mm = (xs - centre[0]) * distance_mm / fx
    y_mm = (ys - centre[1]) * distance_mm / fx
    z = distance_mm + np.tan(np.radians(tilt_x)) * x_mm + np.tan(np.radians(tilt_y)) * y_mm
    if bend_mm is not None:
        t = x_mm if bend_axis == "vertical" else y_mm
        r = abs(bend_mm)
        sag = r - np.sqrt(np.clip(r * r - t * t, 0, None))
        z = z + (sag if bend_mm > 0 else -sag)
    if fold_deg is not None:
        across = {"vertical": x_mm, "horizontal": y_mm, "diagonal": (x_mm + y_mm) / np.sqrt(2)}[fold_axis]
        z = z + np.abs(across) * np.tan(np.radians(fold_deg))
    if point_deg is not None:
        z = z + np.hypot(x_mm, y_mm) * np.tan(np.radians(point_deg))
    if bump_mm is not None:
        z = z - bump_mm * np.exp(-(x_mm**2 + y_mm**2) / (2 * 10.0**2))
    out = z.astype(np.float32)
    outside = (np.abs(x_mm) > size_mm / 2) | (np.abs(y_mm) > size_mm / 2)
    out[outside] = background_mm if background_mm is not None else 0.0
    return out


def sensor(
    depth: np.ndarray,
    rng: np.random.Generator,
    *,
    noise_at_1m_mm: float = 4.0,
    holes: float = 0.03,
    quantum_mm: float = 1.0,
) -> np.ndarray:
    """Depth-camera-like: noise growing with the square of distance (by default 4 mm at 1 m, 0.4%: at
    the good end of active stereo; scripts/depth_eval.py --noise-at-1m 10 tries 1%), independent per pixel
    (real stereo noise is spatially correlated), missing pixels, and 1 mm steps (z16 at 1 mm units)."""
    z = depth.astype(np.float64)
    noisy = z + rng.normal(0.0, 1.0, z.shape) * noise_at_1m_mm * (z / 1000.0) ** 2
    noisy[rng.random(z.shape) < holes] = 0.0
    noisy[z == 0] = 0.0
    return (np.round(noisy / quantum_mm) * quantum_mm).astype(np.float32)


def frame(depth_mm: np.ndarray, fx: float, skew_s: float = 0.0) -> DepthFrame:
    return DepthFrame(depth_mm, fx, fx, skew_s)


def door_visit(engine, matcher, cam, source) -> list[dict]:  # noqa: ANN001 - FaceEngine, Matcher, CameraConfig
    """One visit in front of a door camera (`cam` read through `source`) through the real capture worker and
    pipeline, with an access policy that asks nothing but the camera's own sensor evidence; every published
    message ({"topic", "payload"}) in order."""
    import io
    import json
    import threading

    from agent.capture import CaptureWorker
    from agent.config import RecognitionConfig
    from agent.publish import PublishConfig, StdoutSink
    from agent.publish.config import AccessPolicyConfig
    from agent.recognition.pipeline import RecognitionPipeline

    wake = threading.Event()
    worker = CaptureWorker(cam, source, wake=wake)
    out = io.StringIO()
    policy = AccessPolicyConfig(
        enabled=True, required_quality="NONE", required_liveness="NONE", min_far_level=0
    )
    sink = StdoutSink(PublishConfig(device_id="test", access=policy), out)
    pipeline = RecognitionPipeline(
        engine, matcher, RecognitionConfig(group_id="door"), [worker], sink, wake=wake
    )
    try:
        pipeline.start()
        worker.start()
        assert pipeline.done.wait(120), "pipeline did not finish"
    finally:
        worker.stop(5)
        pipeline.stop(5)
    return [json.loads(line) for line in out.getvalue().splitlines()]
