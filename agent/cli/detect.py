"""`face-agent detect IMAGE...`: faces, boxes and keypoints of image files, one JSON line per image."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", choices=["openvino", "onnxruntime"], default="openvino", help="runtime")
    p.add_argument("--model", default="dlib-resnet-v1", help="embedding model (models/manifest.json)")
    p.add_argument("--precision", choices=["int8", "fp32"], default="int8", help="embedding model variant")
    p.add_argument(
        "--detector",
        choices=["blazeface-full", "blazeface-short"],
        default="blazeface-full",
        help="face detector: full range (faces from 2 m and further) or short range (selfie distance)",
    )
    p.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="flip test-time augmentation, as the agent runs by default (its own model id, ...+flip)",
    )
    p.add_argument(
        "--landmarks",
        choices=["auto", "mesh", "detector"],
        default="auto",
        help="align the chip on face-mesh points or the detector's keypoints (auto: as the agent does)",
    )


def cmd_detect(args: argparse.Namespace) -> int:
    from agent.evaluation.calibrate import make_engine

    engine = make_engine(
        None,
        args.model,
        args.precision,
        args.runtime,
        args.detector,
        flip=args.flip,
        landmarks=args.landmarks,
    )
    for path in args.images:
        faces = engine.analyze(Path(path).read_bytes(), args.max_faces)
        print(
            json.dumps(
                {
                    "image": str(path),
                    "model": engine.model_id,
                    "faces": [
                        {
                            "box": f.face.box.as_xywh(),
                            "score": round(f.face.score, 4),
                            "keypoints": f.face.keypoints.round(1).tolist(),
                        }
                        for f in faces
                    ],
                }
            )
        )
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "detect",
        help="detect and embed faces in image files, print JSON lines",
        description="Detect faces in each image and print one JSON line per image: the model id and, per "
        "face, its box (x, y, w, h in pixels), detector score and six keypoints (eyes, nose, mouth, ears).",
    )
    _add_engine_args(d)
    d.add_argument("--max-faces", type=int, default=None, help="at most this many faces per image (largest)")
    d.add_argument("images", nargs="+", help="image files (JPEG, PNG, BMP, WebP)")
    d.set_defaults(func=cmd_detect)
