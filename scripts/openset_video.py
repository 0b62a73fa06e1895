#!/usr/bin/env python3
"""What track fusion does to both open-set errors on the real videos of ../shared/data (issue 12, item 2).

A gallery of the two Hamilton-clip people plus N strangers from lfw-devtrain (one photo each) is searched by
every face of both videos, the way the camera loop does at the stranger rate given. Per frame: how many face
searches would have named somebody on their own (a per-frame decision). Per track (what the agent does): the
recognized events. The pedestrians are nobody in the gallery, so every name there is a false one; in the
Hamilton clip, the wait is the media time from a person's first detected frame to their recognized event.

    nice python scripts/openset_video.py --strangers 500 --rate 1e-3
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.capture import CaptureWorker, open_source  # noqa: E402
from agent.config import CameraConfig, EngineConfig, RecognitionConfig  # noqa: E402
from agent.evaluation.datadir import shared_data_dir  # noqa: E402
from agent.evaluation.lfw import load_dataset  # noqa: E402
from agent.gallery import Gallery, GalleryConfig, Matcher, ScoreMap  # noqa: E402
from agent.inference.engine import FaceEngine  # noqa: E402
from agent.inference.runtime.cpu import cpu_model  # noqa: E402
from agent.publish import PublishConfig, StdoutSink  # noqa: E402
from agent.recognition.pipeline import RecognitionPipeline  # noqa: E402

FR = "faces/face_recognition/examples"
CLIPS = {
    "hamilton": f"{FR}/short_hamilton_clip.mp4",
    "pedestrians": "faces/facenet_pytorch/examples/video.mp4",
}
ENROL = {"lin-manuel": f"{FR}/lin-manuel-miranda.png", "alex": f"{FR}/alex-lacamoire.png"}


class RecordingMatcher(Matcher):
    """The pipeline's matcher, also keeping the best score of every search (one per face and frame)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.best: list[tuple[float, str | None]] = []

    def search(self, group_id, vector, top_k=1, min_score=0.0):  # noqa: ANN001
        found = super().search(group_id, vector, top_k, min_score)
        self.best.append((found[0].score, found[0].outer_id) if found else (0.0, None))
        return found


def build_gallery(engine: FaceEngine, data: Path, path: Path, strangers: int) -> Gallery:
    gallery = Gallery(GalleryConfig(path=path))
    gallery.create_group(group_id="door")
    for person, rel in ENROL.items():
        face = engine.analyze((data / rel).read_bytes(), max_faces=1)[0]
        gallery.add_face("door", person, face.vector, engine.model_id)
    ds = load_dataset(data / "lfw-devtrain")
    taken: set[int] = set()
    for path_, ident in zip(ds.paths, ds.identities, strict=True):
        if len(taken) >= strangers or int(ident) in taken:
            continue
        faces = engine.analyze(path_.read_bytes(), max_faces=1)
        if faces:
            gallery.add_face("door", f"lfw-{path_.parent.name}", faces[0].vector, engine.model_id)
            taken.add(int(ident))
    return gallery


def play(
    engine, matcher, rel: str, data: Path, rate: float, min_score: float | None
) -> tuple[list[dict], dict, float]:
    cam = CameraConfig(id="door", source=str(data / rel), realtime=False, min_face_px=24)
    wake = threading.Event()
    worker = CaptureWorker(cam, open_source(cam), wake=wake)
    out = io.StringIO()
    rule = {"min_score": min_score} if min_score is not None else {"max_stranger_rate": rate}
    rec = RecognitionConfig(group_id="door", cooldown_s=0, **rule)
    pipeline = RecognitionPipeline(
        engine, matcher, rec, [worker], StdoutSink(PublishConfig(device_id="v"), out), wake=wake
    )
    pipeline.start()
    worker.start()
    if not pipeline.done.wait(600):
        raise RuntimeError("pipeline did not finish")
    worker.stop(5)
    pipeline.stop(5)
    events = [json.loads(line)["payload"] for line in out.getvalue().splitlines()]
    return events, pipeline.stats(), pipeline.required_score()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=shared_data_dir(ROOT))
    ap.add_argument("--strangers", type=int, default=500)
    ap.add_argument("--rate", type=float, default=1e-3)
    ap.add_argument("--min-score", type=float, default=None, help="a fixed score instead (the 0.2 rule: 80)")
    args = ap.parse_args()
    engine = FaceEngine(EngineConfig())
    with tempfile.TemporaryDirectory() as tmp:
        gallery = build_gallery(engine, args.data, Path(tmp) / "g", args.strangers)
        try:
            matcher = RecordingMatcher(gallery, engine.model_id, ScoreMap(engine.thresholds), gallery.config)
            print(
                f"# {engine.model_id}, {matcher.faces('door')} faces, stranger rate {args.rate:g}, "
                f"CPU {cpu_model()}"
            )
            for name, rel in CLIPS.items():
                matcher.best.clear()
                events, stats, required = play(engine, matcher, rel, args.data, args.rate, args.min_score)
                named = [(s, p) for s, p in matcher.best if s >= required]
                known = [e for e in events if e.get("person_id")]
                print(
                    f"{name}: required score {required:.1f}; {len(matcher.best)} face searches, "
                    f"{len(named)} would name somebody on their own frame "
                    f"({sorted({p for _, p in named})}); tracks {stats['cameras']['door']['tracks']}, "
                    f"events: {[(e['person_id'], e['source']['frame']) for e in known]}, "
                    f"{sum(1 for e in events if not e.get('person_id'))} unknown"
                )
        finally:
            gallery.close()


if __name__ == "__main__":
    main()
