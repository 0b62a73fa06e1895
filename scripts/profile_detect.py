"""Where the time of one face detection on a 640x480 frame goes, stage by stage, before and after the
post-processing rework (BlazeFace full range, per runtime). Run it niced on a shared machine:

    nice -n 10 python scripts/profile_detect.py [--frames 200] [--runtimes openvino onnxruntime]

Frames: the real Hamilton clip read with cv2.VideoCapture, letterboxed into 640x480 (what a VGA camera
delivers) and JPEG-encoded once for the decode stage. Stages: decode (agent.imageio.decode_bytes of the
JPEG, what the HTTP API does; camera frames skip it), letterbox/resize to the 192x192 input, blob (colour
swap, normalisation, NCHW), inference, box decoding (scores, anchor decoding of the candidates), NMS
(weighted blend), mapping to image pixels.

"before" is `ReferenceDetector` below, the post-processing this change replaced, kept as the reference
tests/test_detector_stages.py compares the detector with; "after" is the detector. Decode, letterbox,
blob, inference and mapping are the same code in both (timed once, shown in both columns). Box decoding
and NMS run back to back on the same inference output, in alternating order (the second one finds the
data in the cache), so their medians compare within one run. The total is detect() end to end,
inference included, so it carries the inference's noise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.capture.imageio import decode_bytes  # noqa: E402
from agent.config import DetectorConfig, ImageLimits, OnnxRuntimeConfig, OpenVINORuntimeConfig  # noqa: E402
from agent.evaluation.datadir import shared_data_dir  # noqa: E402
from agent.inference.detector import BlazeFaceDetector, letterbox, weighted_nms  # noqa: E402
from agent.inference.manifest import Manifest  # noqa: E402
from agent.inference.runtime import open_session  # noqa: E402
from agent.inference.runtime.cpu import cpu_info  # noqa: E402
from agent.types import Face  # noqa: E402

CLIP = "faces/face_recognition/examples/short_hamilton_clip.mp4"
STAGES = ("decode", "letterbox", "blob", "inference", "box decoding", "nms", "to image")


def vga_frames(path: Path, n: int) -> list[np.ndarray]:
    """Up to n frames of the video, each scaled to fit and letterboxed into a black 640x480 frame."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    try:
        while len(frames) < n:
            ok, img = cap.read()
            if not ok:
                break
            s = min(640 / img.shape[1], 480 / img.shape[0])
            w, h = round(img.shape[1] * s), round(img.shape[0] * s)
            if (w, h) != (img.shape[1], img.shape[0]):
                img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            frame = np.zeros((480, 640, 3), np.uint8)
            y, x = (480 - h) // 2, (640 - w) // 2
            frame[y : y + h, x : x + w] = img
            frames.append(frame)
    finally:
        cap.release()
    if not frames:
        raise SystemExit(f"no frames could be read from {path}")
    return frames


# -- the previous implementation, kept as the reference ------------------------------------------------------


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def reference_weighted_nms(
    boxes: np.ndarray, scores: np.ndarray, iou_thr: float
) -> list[tuple[np.ndarray, float]]:
    order = np.argsort(-scores)
    remaining = order
    out: list[tuple[np.ndarray, float]] = []
    while remaining.size:
        top = remaining[0]
        iou = _iou(boxes[top, :4], boxes[remaining, :4])
        group = remaining[iou > iou_thr]
        if group.size == 0:
            group = remaining[:1]
        w = scores[group][:, None]
        out.append(((boxes[group] * w).sum(0) / w.sum(), float(scores[top])))
        remaining = remaining[~np.isin(remaining, group)]
    return out


class ReferenceDetector(BlazeFaceDetector):
    """BlazeFace post-processing as it was: every anchor's sigmoid in float64, then decoding of the
    candidates one column at a time, NMS with set operations, one face at a time to image pixels. Set-up,
    letterbox and mapping to pixels are the detector's own (they did not change)."""

    def blob(self, canvas: np.ndarray) -> np.ndarray:
        mean, scale = self._blob
        return cv2.dnn.blobFromImage(canvas, scale, None, mean, True)

    def candidates(self, out: dict[str, np.ndarray], thr: float) -> tuple[np.ndarray, np.ndarray]:
        raw_boxes = out[self._out_boxes].reshape(-1, 4 + 2 * self._num_kp)
        raw_scores = out[self._out_scores].reshape(-1)
        scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores.astype(np.float64), -self._clip, self._clip)))
        keep = np.flatnonzero(scores >= thr)
        if keep.size == 0:
            return np.zeros((0, raw_boxes.shape[1]), np.float32), scores[keep]
        r = raw_boxes[keep] / self._coord_scale
        anchors = self._anchors[keep]
        cx, cy = r[:, 0] + anchors[:, 0], r[:, 1] + anchors[:, 1]
        w, h = r[:, 2], r[:, 3]
        kps = r[:, 4:].reshape(-1, self._num_kp, 2) + anchors[:, None, :]
        box = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        return np.concatenate([box, kps.reshape(len(r), -1)], axis=1), scores[keep]

    def detect(self, bgr: np.ndarray, score_threshold: float | None = None) -> list[Face]:
        canvas, lb = letterbox(bgr, self.size)
        out = self._session.run(self.blob(canvas))
        thr = self._config.score_threshold if score_threshold is None else score_threshold
        rows, scores = self.candidates(out, thr)
        if not len(scores):
            return []
        return self.to_faces(reference_weighted_nms(rows, scores, self._config.nms_iou), lb)


def detector_pair(
    runtime: str, config: DetectorConfig | None = None
) -> tuple[BlazeFaceDetector, ReferenceDetector]:
    """The detector and the reference on one shared session of BlazeFace full range."""
    config = config or DetectorConfig()
    rt = OpenVINORuntimeConfig() if runtime == "openvino" else OnnxRuntimeConfig()
    info = Manifest().info("blazeface-full", "fp32", runtime)
    session = open_session(info.files, rt)
    return BlazeFaceDetector(info, session, config), ReferenceDetector(info, session, config)


def max_difference(a: list[Face], b: list[Face]) -> float:
    """Largest difference of box corners, keypoints and scores between two face lists (inf if they differ
    in number)."""
    if len(a) != len(b):
        return float("inf")
    diff = 0.0
    for fa, fb in zip(a, b, strict=True):
        ca = np.array([fa.box.x1, fa.box.y1, fa.box.x2, fa.box.y2, fa.score])
        cb = np.array([fb.box.x1, fb.box.y1, fb.box.x2, fb.box.y2, fb.score])
        diff = max(diff, float(np.abs(ca - cb).max()), float(np.abs(fa.keypoints - fb.keypoints).max()))
    return diff


# -- timing --------------------------------------------------------------------------------------------------


def _timed(samples: list[float], fn: Callable[..., Any], *args: Any) -> Any:
    t = time.perf_counter()
    result = fn(*args)
    samples.append(time.perf_counter() - t)
    return result


class _Pairs:
    """Times the before and after variant of a stage back to back, in alternating order (whichever runs
    second finds the frame in the cache)."""

    def __init__(self) -> None:
        self.t: dict[str, dict[str, list[float]]] = {
            v: {s: [] for s in (*STAGES, "total")} for v in ("before", "after")
        }
        self.flip = False

    def both(self, stage: str, old: Callable[[], Any], new: Callable[[], Any]) -> tuple[Any, Any]:
        self.flip = not self.flip
        if self.flip:
            return _timed(self.t["before"][stage], old), _timed(self.t["after"][stage], new)
        got = _timed(self.t["after"][stage], new)
        return _timed(self.t["before"][stage], old), got

    def same(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        """A stage this change did not touch: timed once, reported in both columns."""
        result = _timed(self.t["before"][stage], fn, *args)
        self.t["after"][stage].append(self.t["before"][stage][-1])
        return result


def profile(runtime: str, frames: list[np.ndarray], jpegs: list[bytes]) -> dict[str, dict[str, list[float]]]:
    det, ref = detector_pair(runtime)
    limits, thr, iou = ImageLimits(), det._config.score_threshold, det._config.nms_iou
    for frame in frames[:5]:  # warm-up: kernel selection and memory planning
        det.detect(frame)
        ref.detect(frame)
    p, worst = _Pairs(), 0.0
    for f, jpeg in zip(frames, jpegs, strict=True):
        p.same("decode", decode_bytes, jpeg, limits)
        canvas, lb = p.same("letterbox", letterbox, f, det.size)
        out = p.same("inference", det._session.run, p.same("blob", ref.blob, canvas))
        (rows_b, scores_b), (rows_a, scores_a) = p.both(
            "box decoding", partial(ref.candidates, out, thr), partial(det.candidates, out, thr)
        )
        blend_b, blend_a = p.both(
            "nms",
            partial(reference_weighted_nms, rows_b, scores_b, iou),
            partial(weighted_nms, rows_a, scores_a, iou),
        )
        faces_a = p.same("to image", det.to_faces, blend_a, lb)
        worst = max(worst, max_difference(faces_a, ref.to_faces(blend_b, lb)))
        p.both("total", partial(ref.detect, f), partial(det.detect, f))
    print(f"  largest difference before/after (px, score): {worst:.2g}")
    return p.t


def _ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples) if samples else float("nan")


def report(runtime: str, t: dict[str, dict[str, list[float]]]) -> None:
    print(f"| {runtime} stage | before median ms | after median ms | after / before |")
    print("|---|---|---|---|")
    for stage in (*STAGES, "total"):
        b, a = _ms(t["before"][stage]), _ms(t["after"][stage])
        print(f"| {stage} | {b:.4f} | {a:.4f} | {a / b:.2f} |")
    post = ("letterbox", "blob", "box decoding", "nms", "to image")
    b = sum(_ms(t["before"][s]) for s in post)
    a = sum(_ms(t["after"][s]) for s in post)
    print(f"| detector work besides inference (sum of medians) | {b:.4f} | {a:.4f} | {a / b:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=shared_data_dir(ROOT))
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--runtimes", nargs="+", default=["openvino", "onnxruntime"])
    args = ap.parse_args()
    frames = vga_frames(args.data / CLIP, args.frames)
    jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for f in frames]
    print(f"CPU: {cpu_info().describe()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{len(frames)} frames of {CLIP} letterboxed to 640x480, BlazeFace full range (192x192)")
    for runtime in args.runtimes:
        print(f"\n{runtime}:")
        report(runtime, profile(runtime, frames, jpegs))


if __name__ == "__main__":
    main()
