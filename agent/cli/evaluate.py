"""`face-agent eval`: pair accuracy, TAR at FAR, open-set FNIR / FPIR and ROC on LFW-format data."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.evaluation.datadir import shared_data_dir

DEFAULT_DATA = shared_data_dir(Path.cwd())


def cmd_eval(args: argparse.Namespace) -> int:
    from agent.evaluation.report import run_eval

    return run_eval(args)


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    e.add_argument(
        "--landmarks",
        choices=["auto", "mesh", "detector", "both"],
        default="auto",
        help="chips aligned on face-mesh points, on the detector's keypoints, both, or as the agent "
        "does (auto)",
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
