#!/usr/bin/env python3
"""The cost of flip test-time augmentation: embedding time per face without and with flip, in one run.

Usage (from the repository root; run with `nice -n 10` on a shared machine):

    nice -n 10 .venv/bin/python scripts/bench_flip.py --runtimes openvino onnxruntime --rounds 15

Aligned chips of real faces (the first image of `--faces` lfw-devtrain people, in $FACE_AGENT_DATA or
../shared/data) are cut once; then per runtime one engine without flip and one with flip embed them, one
face per call (as the camera loop does for a lone face) and eight per call, the two engines alternating call
by call so that the machine's drift falls on both alike. Prints medians and p90 in ms, the flip / plain ratio
of the medians, the CPU model and the load average before and after. Compare rows of one run only.
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

import numpy as np  # noqa: E402

from agent.config import EmbedderConfig, EngineConfig, OnnxRuntimeConfig, OpenVINORuntimeConfig  # noqa: E402
from agent.evaluation.datadir import shared_data_dir  # noqa: E402
from agent.inference.engine import FaceEngine  # noqa: E402
from agent.inference.runtime.cpu import cpu_info  # noqa: E402

BATCH = 8


def engines(runtime: str, model: str, precision: str) -> dict[str, FaceEngine]:
    rt = OpenVINORuntimeConfig() if runtime == "openvino" else OnnxRuntimeConfig()
    return {
        name: FaceEngine(
            EngineConfig(runtime=rt, embedder=EmbedderConfig(model=model, precision=precision, flip=flip))
        )
        for name, flip in (("plain", False), ("flip", True))
    }


def cut_chips(engine: FaceEngine, data: Path, faces: int) -> list[np.ndarray]:
    people = sorted(p for p in (data / "lfw-devtrain" / "images").iterdir() if p.is_dir())
    chips = []
    for person in people:
        found = engine.analyze(sorted(person.glob("*.jpg"))[0].read_bytes(), 1, keep_chips=True)
        if found:
            chips.append(found[0].chip)
        if len(chips) == faces:
            return chips
    raise SystemExit(f"only {len(chips)} faces found, {faces} asked for")


def _ms(fn) -> float:  # noqa: ANN001 - a no-argument callable
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def time_pair(pair: dict[str, FaceEngine], chips: list[np.ndarray], rounds: int) -> dict[str, dict]:
    """Per engine: ms per face at batch 1 and at batch BATCH, the two engines interleaved call by call."""
    single: dict[str, list[float]] = {n: [] for n in pair}
    batched: dict[str, list[float]] = {n: [] for n in pair}
    batch = (chips * BATCH)[:BATCH]
    for _ in range(rounds):
        for chip in chips:
            for name, engine in pair.items():
                single[name].append(_ms(lambda e=engine, c=chip: e.embedder.embed_chips([c])))
        for name, engine in pair.items():
            batched[name].append(_ms(lambda e=engine: e.embedder.embed_chips(batch)) / BATCH)
    return {n: {"single": single[n], "batch": batched[n]} for n in pair}


def _p90(values: list[float]) -> float:
    return float(np.percentile(values, 90))


def report(runtime: str, model_ids: dict[str, str], times: dict[str, dict]) -> None:
    for kind, label in (("single", "1 face per call"), ("batch", f"{BATCH} faces per call, per face")):
        med = {n: statistics.median(times[n][kind]) for n in times}
        for name in times:
            print(
                f"  {runtime:12s} {model_ids[name]:42s} {label:28s} median {med[name]:6.2f} ms  "
                f"p90 {_p90(times[name][kind]):6.2f} ms  (n={len(times[name][kind])})"
            )
        print(f"  {runtime:12s} {'flip / plain':42s} {label:28s} ratio  {med['flip'] / med['plain']:.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=shared_data_dir(ROOT))
    ap.add_argument("--model", default="dlib-resnet-v1")
    ap.add_argument("--precision", choices=["int8", "fp32"], default="int8")
    ap.add_argument("--runtimes", nargs="+", default=["openvino", "onnxruntime"])
    ap.add_argument("--faces", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=15, help="passes over the faces (each engine, each pass)")
    args = ap.parse_args()

    print(f"CPU: {cpu_info().describe()}; {os.cpu_count()} logical cores")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    chips = None
    for runtime in args.runtimes:
        pair = engines(runtime, args.model, args.precision)
        chips = chips or cut_chips(pair["plain"], args.data, args.faces)
        times = time_pair(pair, chips, args.rounds)
        report(runtime, {n: e.model_id for n, e in pair.items()}, times)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
