"""Face mesh cost and eye-openness traces on the real videos (the blink cue's data).

    FACE_AGENT_DATA=../shared/data python scripts/bench_mesh.py [--runs 300]

Latency: one `FaceMesh.eye_openness` call per face (crop + inference + landmarks), median and p90 over
`--runs` calls on real LFW faces, per runtime. Traces: eye openness on every frame of every face track
(>= 64 px) of every real video, with the lowest openness / running baseline seen and the blinks counted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from liveness_eval import live_tracks  # noqa: E402

from agent.config import EngineConfig, OnnxRuntimeConfig  # noqa: E402
from agent.evaluation.datadir import shared_data_dir  # noqa: E402
from agent.gates.blink import BlinkConfig, BlinkDetector  # noqa: E402
from agent.inference.engine import FaceEngine  # noqa: E402
from agent.inference.mesh import open_face_mesh  # noqa: E402
from agent.inference.runtime.cpu import cpu_model  # noqa: E402


def latency(cfg: EngineConfig, faces: list, runs: int) -> tuple[float, float]:
    mesh = open_face_mesh(cfg)
    for image, face in faces[:5]:  # warm-up
        mesh.eye_openness(image, face)
    ms = []
    for i in range(runs):
        image, face = faces[i % len(faces)]
        t0 = time.perf_counter()
        mesh.eye_openness(image, face)
        ms.append(1000 * (time.perf_counter() - t0))
    return float(np.median(ms)), float(np.percentile(ms, 90))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=shared_data_dir(ROOT))
    ap.add_argument("--runs", type=int, default=300)
    args = ap.parse_args()
    engine = FaceEngine(EngineConfig())
    lfw = sorted((args.data / "lfw-devtrain").rglob("*.jpg"))[:100]
    faces = [(img, fs[0]) for p in lfw if (fs := engine.detect(img := engine.load(p.read_bytes()).pixels))]
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    for name, cfg in (
        ("openvino f32", EngineConfig()),
        ("onnxruntime", EngineConfig(runtime=OnnxRuntimeConfig())),
    ):
        med, p90 = latency(cfg, faces, args.runs)
        print(f"face mesh per face, {name}: median {med:.2f} ms, p90 {p90:.2f} ms ({args.runs} runs)")
    mesh = open_face_mesh(engine.config)
    every = BlinkConfig(min_interval_s=0)
    for video in sorted(args.data.rglob("*.mp4")):
        for k, track in enumerate(live_tracks(engine, video, 8)):
            det, values = BlinkDetector(every), []
            for image, face, t in track:
                value = mesh.eye_openness(image, face, every.min_face_probability)
                values.append(value)
                if value is not None:
                    det.update(value, t)
            shown = " ".join("-" if v is None else f"{v:.2f}" for v in values)
            print(
                f"{video.name} track {k} ({track[0][2]:.2f}-{track[-1][2]:.2f} s, {len(track)} frames, face "
                f"{np.median([f.box.width for _, f, _ in track]):.0f} px): blinks {det.blinks}, lowest "
                f"openness/baseline {det.min_ratio:.2f}\n  {shown}"
            )


if __name__ == "__main__":
    main()
