#!/usr/bin/env python3
"""The cost of aligning on face-mesh points: time per face from a detected face to its embedding (chip cut +
embedding, flip on as by default), with the detector's keypoints and with the face mesh, in one run; and the
cost of re-embedding stored thumbnails (the mesh space aligns each one again).

    nice -n 10 .venv/bin/python scripts/bench_mesh_align.py --runtimes openvino onnxruntime --rounds 15

The first image of `--faces` lfw-devtrain people (in $FACE_AGENT_DATA or ../shared/data) is decoded and its
central face detected once; then per runtime the two engines embed each face, one face per call (as the camera
loop does for a lone face), alternating call by call so that the machine's drift falls on both alike. Prints
medians and p90 in ms, the mesh / keypoints ratio of the medians, the CPU model and the load average before
and after. Compare rows of one run only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402

from agent.config import EmbedderConfig, EngineConfig, OnnxRuntimeConfig, OpenVINORuntimeConfig  # noqa: E402
from agent.evaluation.datadir import shared_data_dir  # noqa: E402
from agent.evaluation.lfw import central_face  # noqa: E402
from agent.inference.engine import FaceEngine  # noqa: E402
from agent.inference.runtime.cpu import cpu_info  # noqa: E402


def _ms(fn, rounds: int) -> list[float]:  # noqa: ANN001
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtimes", nargs="+", default=["openvino", "onnxruntime"])
    ap.add_argument("--faces", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    root = shared_data_dir(ROOT) / "lfw-devtrain" / "images"
    people = sorted(p for p in root.iterdir() if p.is_dir())[: args.faces]
    print(f"CPU {cpu_info()}; {os.cpu_count()} logical cores; load {os.getloadavg()[0]:.2f}")
    for runtime in args.runtimes:
        rt = OpenVINORuntimeConfig() if runtime == "openvino" else OnnxRuntimeConfig()
        eng = {
            name: FaceEngine(EngineConfig(runtime=rt, embedder=EmbedderConfig(landmarks=name)))
            for name in ("detector", "mesh")
        }
        faces = []
        for person in people:
            img = eng["detector"].load(sorted(person.glob("*.jpg"))[0].read_bytes())
            face = central_face(eng["detector"].detect(img), img.width, img.height)
            if face is not None:
                faces.append((img, face))
        thumbs = [
            bytes(cv2.imencode(".jpg", eng["detector"].embed(img, [f], keep_chips=True)[0].chip)[1])
            for img, f in faces
        ]
        live: dict[str, list[float]] = {"detector": [], "mesh": []}
        again: dict[str, list[float]] = {"detector": [], "mesh": []}
        for _ in range(args.rounds):
            for (img, face), thumb in zip(faces, thumbs, strict=True):
                for name, engine in eng.items():
                    live[name] += _ms(lambda e=engine, i=img, f=face: e.embed(i, [f]), 1)
                    again[name] += _ms(lambda e=engine, t=thumb: e.embed_thumbnails([t]), 1)
        print(f"{runtime}: {len(faces)} faces x {args.rounds} rounds, per face (median / p90 ms)")
        for label, table in (("detected face -> embedding", live), ("thumbnail -> embedding", again)):
            med = {k: statistics.median(v) for k, v in table.items()}
            p90 = {k: statistics.quantiles(v, n=10)[-1] for k, v in table.items()}
            print(
                f"  {label:28s} keypoints {med['detector']:.2f} / {p90['detector']:.2f}   "
                f"mesh {med['mesh']:.2f} / {p90['mesh']:.2f}   "
                f"mesh / keypoints {med['mesh'] / med['detector']:.2f}x"
            )
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
