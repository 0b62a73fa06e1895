#!/usr/bin/env python3
"""Which precision OpenVINO's CPU plugin runs each layer of a model in, on this CPU: the runtime model's
`layerType` / `runtimePrecision`, counted. The agent's settings (INFERENCE_PRECISION_HINT f32, LATENCY).

On x86 every convolution of the shipped INT8 QDQ file runs in u8; on arm64 the plugin keeps only some in
int8 and runs the others in f32 on fake-quantized inputs, which is why its INT8 embeddings differ from x86's
(scripts/arm64_check.sh prints both).

    python scripts/arm64/ov_precisions.py models/dlib-resnet-v1/int8-qdq.onnx [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
from pathlib import Path

LAYERS = ("Convolution", "FullyConnected", "MatMul", "Eltwise", "FakeQuantize", "Subgraph")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    import openvino as ov

    core = ov.Core()
    settings = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    compiled = core.compile_model(core.read_model(str(args.model)), "CPU", settings)
    counts: collections.Counter = collections.Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        kind = rt["layerType"].astype(str) if "layerType" in rt else op.get_type_name()
        prec = rt["runtimePrecision"].astype(str) if "runtimePrecision" in rt else "?"
        if kind in LAYERS:
            counts[f"{kind} {prec}"] += 1
    res = {
        "machine": platform.machine(),
        "qemu_cpu": os.environ.get("QEMU_CPU", ""),
        "openvino": ov.__version__,
        "model": args.model.name,
        "layers": dict(sorted(counts.items())),
    }
    print(json.dumps(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
