#!/usr/bin/env python3
"""Where do x86 and arm64 see different faces in a video? Decoder and detector, frame by frame.

`face-agent run` on the Hamilton clip counted 395 faces on x86 and 401 inside the arm64 root (issue 19). Two
places can differ: the video decoder (each platform's opencv-python-headless wheel bundles its own FFmpeg
build) and the detector's kernels. This script, run once per platform, records for every frame the sha256 of
the decoded BGR pixels and every detection down to `--floor` (below the engine's threshold, to see faces
that sit near it) on each runtime; `--compare` reads two such files and says which frames differ and why.
Faces are counted as `run` counts them: the engine's detections at its threshold (largest 10) whose box
side is at least the camera's min_face_px.

    python scripts/arm64/video_faces.py --models-dir models --video CLIP --out x86.json
    python scripts/arm64/video_faces.py --compare x86.json arm64.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np


def _box(face) -> list[float]:  # noqa: ANN001
    return [round(float(v), 4) for v in (face.box.x1, face.box.y1, face.box.x2, face.box.y2)]


def _raw_hashes(video: Path) -> list[str]:
    """sha256 of each frame as the decoder gives it before the BGR conversion (CAP_PROP_CONVERT_RGB off)."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    cap.set(cv2.CAP_PROP_CONVERT_RGB, 0)
    out = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(hashlib.sha256(frame.tobytes()).hexdigest()[:16] + f":{frame.shape}")
    cap.release()
    return out


def record(args: argparse.Namespace) -> dict:
    import cv2

    from agent.evaluation.calibrate import make_engine

    out: dict = {"machine": platform.machine(), "cv2": cv2.__version__, "threshold": None, "runtimes": {}}
    frames: list[str] = []
    cap = cv2.VideoCapture(str(args.video))
    if not cap.isOpened():
        raise SystemExit(f"cannot open {args.video}")
    images = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(hashlib.sha256(frame.tobytes()).hexdigest()[:16])
        images.append(frame)
    cap.release()
    out["frames"] = frames
    out["raw_frames"] = _raw_hashes(args.video)
    for i in args.dump_frames:  # full frames for a pixel-level comparison on the host
        np.save(args.out.with_name(f"{args.out.stem}-frame{i}.npy"), images[i])
    if args.decode_only:
        return out
    for runtime in args.runtimes:
        engine = make_engine(args.models_dir, "dlib-resnet-v1", "int8", runtime, args.detector, flip=True)
        thr = engine.detector._config.score_threshold  # noqa: SLF001 - the threshold `run` uses by default
        out["threshold"] = thr
        t0 = time.perf_counter()
        rows: dict[str, list] = {"faces": [], "low": []}
        for img in images:
            # What `run` sees (the engine's threshold, largest 10 first), and down to the floor: faces near
            # the threshold. Separate calls: the detector's weighted NMS blends every candidate it keeps.
            for key, faces in (
                ("faces", engine.detect(img, 10)),
                ("low", engine.detector.detect(img, score_threshold=min(args.floor, thr))),
            ):
                rows[key].append([[round(float(f.score), 5), _box(f)] for f in faces])
        out["runtimes"][runtime] = rows
        print(f"{runtime}: {len(images)} frames in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return out


def _side(box: list[float]) -> float:
    return round(min(box[2] - box[0], box[3] - box[1]), 2)


def compare(a_path: Path, b_path: Path, min_px: int) -> None:
    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    thr, px = a["threshold"], min_px

    def n(fr: list) -> int:  # what the pipeline counts: at the threshold, box side >= min_face_px
        return sum(s >= thr and min(b[2] - b[0], b[3] - b[1]) >= px for s, b in fr)

    same_px = sum(x == y for x, y in zip(a["frames"], b["frames"], strict=False))
    if "raw_frames" in a and "raw_frames" in b:
        same_raw = sum(x == y for x, y in zip(a["raw_frames"], b["raw_frames"], strict=False))
        print(f"before the BGR conversion ({a['raw_frames'][0].split(':')[1]}): {same_raw} frames identical")
    print(
        f"{a['machine']} cv2 {a['cv2']} / {b['machine']} cv2 {b['cv2']}: {len(a['frames'])} / "
        f"{len(b['frames'])} frames decoded, {same_px} with identical pixels"
    )
    for rt in sorted(set(a["runtimes"]) & set(b["runtimes"])):
        ra, rb = a["runtimes"][rt]["faces"], b["runtimes"][rt]["faces"]
        la, lb = a["runtimes"][rt]["low"], b["runtimes"][rt]["low"]
        na, nb = sum(map(n, ra)), sum(map(n, rb))
        print(f"{rt}: faces at threshold {thr}, side >= {px} px: {na} / {nb}")
        for i, (fa, fb) in enumerate(zip(ra, rb, strict=False)):
            ca, cb = n(fa), n(fb)
            if ca != cb:
                pixels = "same pixels" if a["frames"][i] == b["frames"][i] else "pixels differ"
                sa, sb = [(s, _side(b)) for s, b in la[i]], [(s, _side(b)) for s, b in lb[i]]
                print(
                    f"  frame {i} ({pixels}): {ca} / {cb} faces; (score, box side) to the floor {sa} / {sb}"
                )
        same = [i for i in range(min(len(ra), len(rb))) if a["frames"][i] == b["frames"][i]]
        dmax = 0.0
        for i in same:
            for (sa, _), (sb, _) in zip(sorted(ra[i]), sorted(rb[i]), strict=False):
                dmax = max(dmax, abs(sa - sb))
        print(f"  on the {len(same)} frames with identical pixels, largest score difference {dmax:.2e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models-dir", type=Path)
    p.add_argument("--video", type=Path)
    p.add_argument("--detector", default="blazeface-full")
    p.add_argument("--runtimes", nargs="+", default=["openvino", "onnxruntime"])
    p.add_argument("--floor", type=float, default=0.3, help="keep detections down to this score")
    p.add_argument("--min-face-px", type=int, default=40, help="the camera's min_face_px (default 40)")
    p.add_argument("--out", type=Path)
    p.add_argument("--decode-only", action="store_true", help="record decoder hashes only, no detection")
    p.add_argument("--dump-frames", type=int, nargs="*", default=[], help="save these frames as .npy")
    p.add_argument("--compare", type=Path, nargs=2, metavar=("X86", "ARM64"))
    args = p.parse_args()
    if args.compare:
        compare(*args.compare, args.min_face_px)
        return
    if not (args.models_dir and args.video and args.out):
        p.error("--models-dir, --video and --out are needed to record")
    args.out.write_text(json.dumps(record(args)))


if __name__ == "__main__":
    main()
