"""INT8 quantization of the embedders, calibrated on aligned crops of real faces: one ONNX QDQ file that both
runtimes load, so an INT8 gallery is one embedding space whichever runtime a device runs.

The crops come from the engine's own detector and alignment (FP32 embedder, OpenVINO), so calibration sees
exactly what the embedder sees at run time. Point --calib-dir at a folder of your own camera's face images to
calibrate for your scene.

Every file keeps its weights in 7-bit ranges, so CPUs without VNNI compute the same embeddings as CPUs with
it (tests/test_int8_cpus.py). Which quantizer per model is in RECIPES below. Measured on the 9523 lfw-devtrain
faces of dlib-resnet-v1 against the alternatives (docs/models.md, "INT8 on every CPU"):
- onnxruntime quantize_static (QDQ, U8S8 per-channel, MinMax), the previous ONNX file: TAR at FAR 1e-4 0.794
  on a VNNI CPU, and on an AVX2 CPU without VNNI min cosine 0.976 to its own VNNI output (saturation); with
  reduce_range the same on both CPUs, but 0.792; U8U8 0.805 at half the speed; S8S8 0.792.
- NNCF on OpenVINO's own graph (the previous OpenVINO IR): TAR 0.840, but a second file and a second space.
- NNCF on the pre-processed ONNX graph, overflow fix in every layer (shipped): 0.837 on onnxruntime, 0.838 on
  OpenVINO, the same embeddings on both CPUs.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import numpy as np


def calibration_inputs(models_dir: Path, model: str, calib_dir: Path, samples: int) -> list[np.ndarray]:
    """Preprocessed embedder inputs (1, ...) from `samples` random face images under calib_dir."""
    from agent.config import EmbedderConfig, EngineConfig, OpenVINORuntimeConfig
    from agent.evaluation.lfw import central_face
    from agent.inference.engine import FaceEngine

    cfg = EngineConfig(
        runtime=OpenVINORuntimeConfig(),
        embedder=EmbedderConfig(model=model, precision="fp32"),
        models_dir=models_dir,
    )
    engine = FaceEngine(cfg)
    paths = sorted(p for p in calib_dir.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    random.Random(1234).shuffle(paths)
    inputs: list[np.ndarray] = []
    for path in paths:
        img = engine.load(path.read_bytes())
        face = central_face(engine.detector.detect(img.pixels), img.width, img.height)
        if face is None:
            continue
        chip = engine.embedder.chips(img.pixels, [face])[0]
        inputs.append(engine.embedder.preprocess([chip]))
        if len(inputs) >= samples:
            break
    print(f"  {len(inputs)} calibration faces from {calib_dir}")
    return inputs


# Per model, which quantizer and how. Both write one QDQ file whose weights use 7-bit ranges (see above):
# - nncf: NNCF on the ONNX graph. pre_process: onnxruntime's pre-processing first; dlib's converted ResNet
#   has Conv -> Mul -> Add (its affine layers) before each Relu; folded into one Conv, each quantized Conv
#   feeds its Relu directly and onnxruntime fuses the QDQ pairs into QLinearConv (without it, onnxruntime ran
#   NNCF's file at 28 ms per face, slower than FP32).
# - onnxruntime: quantize_static with reduce_range. For FaceNet, NNCF's full bias correction fails on its ONNX
#   graph ("Duplicate definition-site") and the fast one gave 71% pair accuracy; onnxruntime's quantizer kept
#   FaceNet at its FP32 accuracy before (TAR 0.885 at 1e-4, as FP32).
RECIPES = {
    "dlib-resnet-v1": {"quantizer": "nncf", "pre_process": True},
    "facenet-casia": {"quantizer": "onnxruntime", "reduce_range": True},
}


def quantize_nncf(fp32_onnx: Path, out_onnx: Path, inputs: list[np.ndarray], pre_process: bool) -> Path:
    """NNCF on the ONNX graph (see the module docstring for why each setting)."""
    import nncf
    import onnx
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        if pre_process:
            quant_pre_process(str(fp32_onnx), str(pre))
        model = onnx.load(str(pre if pre_process else fp32_onnx))
    input_name = model.graph.input[0].name
    quantized = nncf.quantize(
        model,
        nncf.Dataset(inputs, lambda x: {input_name: x}),
        preset=nncf.QuantizationPreset.PERFORMANCE,
        subset_size=len(inputs),
        fast_bias_correction=False,
        # 7-bit weight ranges in every layer: CPUs without VNNI (AVX2, AVX-512 without VNNI) multiply u8 by s8
        # with VPMADDUBSW, whose 16-bit pair sums saturate with 8-bit weights; with 7 bits they cannot, so the
        # same file gives the same embeddings on every x86 CPU (tests/test_int8_cpus.py).
        advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE),
    )
    onnx.save(quantized, str(out_onnx))
    return out_onnx


def quantize_onnxruntime(
    fp32_onnx: Path, out_onnx: Path, inputs: list[np.ndarray], reduce_range: bool
) -> Path:
    """onnxruntime quantize_static: QDQ, U8 activations, S8 per-channel weights (7-bit with reduce_range),
    MinMax calibration."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = onnx.load(str(fp32_onnx), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(inputs)

        def get_next(self) -> dict | None:
            x = next(self._it, None)
            return None if x is None else {input_name: x}

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_onnx), str(pre))
        quantize_static(
            str(pre),
            str(out_onnx),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=reduce_range,
            calibrate_method=CalibrationMethod.MinMax,
            # Reduce ranges every 64 samples instead of keeping every activation (12 GB at 300 samples). Not a
            # divisor of the sample count: onnxruntime raises "No data is collected" on an empty last chunk.
            extra_options={"CalibMaxIntermediateOutputs": 64 if len(inputs) % 64 else 63},
        )
    return out_onnx


def quantize_model(models_dir: Path, manifest: dict, model: str, calib_dir: Path, samples: int) -> dict:
    fp32 = models_dir / manifest["models"][model]["variants"]["fp32"]["files"]["onnx"]["path"]
    inputs = calibration_inputs(models_dir, model, calib_dir, samples)
    out = models_dir / model / "int8-qdq.onnx"
    recipe = dict(RECIPES[model])
    quantizer = {"nncf": quantize_nncf, "onnxruntime": quantize_onnxruntime}[recipe.pop("quantizer")]
    return {"onnx": quantizer(fp32, out, inputs, **recipe)}
