"""Command line: `face-agent <command>`. Each command builds only the parts it needs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from agent import __version__
from agent.errors import AgentError, ConfigError
from agent.evaluation.datadir import shared_data_dir

DEFAULT_DATA = shared_data_dir(Path.cwd())


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


def cmd_detect(args: argparse.Namespace) -> int:
    from agent.evaluation.calibrate import make_engine

    engine = make_engine(None, args.model, args.precision, args.runtime, args.detector)
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


def cmd_eval(args: argparse.Namespace) -> int:
    from agent.evaluation.report import run_eval

    return run_eval(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from agent.cli.bench import run_bench

    return run_bench(args)


def cmd_run(args: argparse.Namespace) -> int:
    """`face-agent run`: the camera agent. A bad config raises ConfigError: exit 78 (see main)."""
    from agent.config import load_agent_config

    cfg = load_agent_config(args.config, os.environ, source=args.source, state_dir=args.state_dir)
    if args.validate_config:
        print(f"configuration OK: {len(cfg.cameras)} camera(s), group {cfg.recognition.group_id!r}")
        return 0
    from agent.app import run_agent

    for handler in list(logging.getLogger().handlers):  # run_agent installs its own (journal-aware)
        logging.getLogger().removeHandler(handler)
    return run_agent(cfg, os.environ, config_path=args.config, source=args.source)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="face-agent", description="Edge face recognition agent")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--version", action="version", version=f"face-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the camera agent (capture, recognition, events)")
    r.add_argument("--config", type=Path, default=None, help="YAML config (default: built-in defaults)")
    r.add_argument("--validate-config", action="store_true", help="check the config and exit (0 ok, 78 bad)")
    r.add_argument("--source", default=None, help="one camera from a device index, path or URL (overrides)")
    r.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="gallery and outbox folder (overrides the file's state_dir; default: $STATE_DIRECTORY, ./state)",
    )
    r.set_defaults(func=cmd_run)

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

    e = sub.add_parser("eval", help="pair accuracy, TAR at FAR and ROC on LFW-format data")
    e.add_argument("--data", type=Path, default=DEFAULT_DATA / "lfw-devtrain", help="LFW-format folder")
    e.add_argument("--models", nargs="+", default=None, help="embedding models (default: all in manifest)")
    e.add_argument("--precisions", nargs="+", default=["int8", "fp32"])
    e.add_argument("--runtimes", nargs="+", default=["openvino", "onnxruntime"])
    e.add_argument("--detector", default="blazeface-full")
    e.add_argument(
        "--flip",
        choices=["on", "off", "both"],
        default="on",
        help="flip test-time augmentation: the default space (on), the plain one (off), or both",
    )
    e.add_argument("--out", type=Path, default=Path("eval-results"), help="folder for JSON and ROC PNG")
    e.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "face-agent" / "eval",
        help="embedding cache, keyed by model file, runtime, detector and alignment",
    )
    e.add_argument(
        "--baseline-dlib", action="store_true", help="also score the dlib face_recognition pipeline"
    )
    e.set_defaults(func=cmd_eval)

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

    from agent.cli import doctor, erase  # install checks and complete erasure of one person (issue 7)

    doctor.add_parser(sub)
    erase.add_parser(sub)

    from agent.cli.tools import add_tool_commands  # enroll, gallery, serve (issue 4); handlers import lazily

    add_tool_commands(sub)
    return p


# Commands that create or write the state dir (gallery embeddings and thumbnails, the event outbox). They run
# with umask 077, as the systemd unit does (UMask=0077), so a quick start from a shell creates biometric state
# 0700 / 0600 too, not 0755 / 0644 (which `doctor` then rightly FAILs).
_WRITES_STATE = {"run", "serve", "enroll", "gallery", "erase"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in _WRITES_STATE:
        os.umask(0o077)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:  # 78 = EX_CONFIG: systemd's RestartPreventExitStatus stops a restart loop
        print(f"face-agent: configuration error: {exc.message}", file=sys.stderr)
        return 78
    except AgentError as exc:
        print(f"face-agent: error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C in eval, bench, enroll ...: no traceback; 130 = 128 + SIGINT
        print("face-agent: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
