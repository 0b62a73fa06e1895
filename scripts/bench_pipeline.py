"""Benchmark of the camera loop on the real videos of ../shared/data. Run it niced on a shared machine:

    nice -n 10 python scripts/bench_pipeline.py --precision fp32 --out bench-pipeline.json

1. latency: one camera playing a clip at its native rate (a live camera: stale frames are dropped), per-stage
   latency p50/p99, capture-to-processed (every analysed frame) and capture-to-publish (every event);
2. throughput: 1 and 4 cameras reading the clip in a loop as fast as recognition goes, for --seconds each:
   sustained analysed frames per second, in total and per camera.
Medians and ratios within one run are what to compare; the machine and its load are printed with them.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.capture import CaptureWorker, open_source  # noqa: E402
from agent.config import CameraConfig, EmbedderConfig, EngineConfig, RecognitionConfig  # noqa: E402
from agent.evaluation.datadir import shared_data_dir  # noqa: E402
from agent.gallery import Gallery, GalleryConfig, Matcher, ScoreMap  # noqa: E402
from agent.inference.engine import FaceEngine  # noqa: E402
from agent.inference.runtime.cpu import cpu_model  # noqa: E402
from agent.publish import PublishConfig, StdoutSink  # noqa: E402
from agent.recognition.pipeline import RecognitionPipeline  # noqa: E402

DATA = shared_data_dir(ROOT)
CLIPS = {
    "hamilton-360p": "faces/face_recognition/examples/short_hamilton_clip.mp4",
    "pedestrians-1080p": "faces/facenet_pytorch/examples/video.mp4",
}
ENROL = {
    "lin-manuel": "faces/face_recognition/examples/lin-manuel-miranda.png",
    "alex": "faces/face_recognition/examples/alex-lacamoire.png",
}


def machine() -> dict[str, object]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "python": sys.version.split()[0],
    }


def run_cameras(engine, matcher, cams: list[CameraConfig], seconds: float | None, workers: int) -> dict:
    wake = threading.Event()
    capture = [CaptureWorker(c, open_source(c), wake=wake) for c in cams]
    sink = StdoutSink(PublishConfig(device_id="bench"), io.StringIO())
    rec = RecognitionConfig(group_id="bench", workers=workers)
    pipeline = RecognitionPipeline(engine, matcher, rec, capture, sink, wake=wake)
    pipeline.start()
    t0 = time.monotonic()
    for w in capture:
        w.start()
    if seconds is None:
        pipeline.done.wait(600)
    else:
        time.sleep(seconds)
    elapsed = time.monotonic() - t0
    for w in capture:
        w.stop(5)
    pipeline.stop(10)
    stats = pipeline.stats()
    processed = {k: v["processed"] for k, v in stats["cameras"].items()}
    return {
        "seconds": round(elapsed, 2),
        "processed": processed,
        "fps_total": round(sum(processed.values()) / elapsed, 2),
        "fps_per_camera": round(sum(processed.values()) / elapsed / len(cams), 2),
        "dropped_stale": {k: v["dropped_stale"] for k, v in stats["cameras"].items()},
        "events": stats["events"]["published"],
        "latency_ms": {
            k: {"n": v["n"], "p50": round(v["p50_ms"], 2), "p99": round(v["p99_ms"], 2)}
            for k, v in stats["latency"].items()
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", choices=["int8", "fp32"], default="int8")
    ap.add_argument("--seconds", type=float, default=20.0, help="duration of each throughput run")
    ap.add_argument(
        "--thresholds",
        type=json.loads,
        default=None,
        help="cosine thresholds JSON when the manifest has none, e.g. '{\"1e-3\": 0.5, ...}'",
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    result: dict[str, object] = {"machine": machine(), "precision": args.precision}
    engine = FaceEngine(EngineConfig(embedder=EmbedderConfig(precision=args.precision)))
    thresholds = engine.thresholds or args.thresholds
    if not thresholds:
        raise SystemExit("the model manifest has no thresholds for this variant: pass --thresholds")
    with tempfile.TemporaryDirectory() as tmp:
        gallery = Gallery(GalleryConfig(path=Path(tmp) / "gallery"))
        gallery.create_group(group_id="bench")
        for person, rel in ENROL.items():
            face = engine.analyze((DATA / rel).read_bytes(), max_faces=1)[0]
            gallery.add_face("bench", person, face.vector, engine.model_id)
        matcher = Matcher(gallery, engine.model_id, ScoreMap(thresholds), gallery.config)
        latency = {}
        for name, rel in CLIPS.items():
            cam = CameraConfig(id="cam0", source=str(DATA / rel), realtime=True, min_face_px=24)
            latency[name] = run_cameras(engine, matcher, [cam], None, 1)
            print(name, json.dumps(latency[name]), flush=True)
        result["latency_live"] = latency
        throughput = {}
        for n in (1, 4):
            cams = [
                CameraConfig(
                    id=f"cam{i}",
                    source=str(DATA / CLIPS["hamilton-360p"]),
                    realtime=False,
                    loop=True,
                    min_face_px=24,
                )
                for i in range(n)
            ]
            throughput[f"{n}_cameras"] = run_cameras(engine, matcher, cams, args.seconds, 1)
            print(n, "cameras", json.dumps(throughput[f"{n}_cameras"]), flush=True)
        result["throughput_fast"] = throughput
        gallery.close()
    # Peak resident memory of this process: engine, gallery and up to 4 cameras with their decoders.
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print("peak RSS", result["peak_rss_mb"], "MB", flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
