"""INT8 quantization of the embedders for both runtimes, calibrated on aligned crops of real faces.

The crops come from the engine's own detector and alignment (FP32 embedder, OpenVINO), so calibration sees
exactly what the embedder sees at run time. Point --calib-dir at a folder of your own camera's face images to
calibrate for your scene.
  OpenVINO:     NNCF post-training quantization, PERFORMANCE preset (symmetric), fast_bias_correction=False
  onnxruntime:  quantize_static, QDQ, U8 activations / S8 per-channel weights, MinMax
(settings from ../shared/docs/models.md; the NNCF MIXED preset and quantize_dynamic were worse there)
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


def quantize_openvino(fp32_onnx: Path, out_xml: Path, inputs: list[np.ndarray]) -> Path:
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32_onnx))
    quantized = nncf.quantize(
        model,
        nncf.Dataset(inputs),
        preset=nncf.QuantizationPreset.PERFORMANCE,
        subset_size=len(inputs),
        fast_bias_correction=False,
    )
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
    return out_xml


def quantize_onnxruntime(fp32_onnx: Path, out_onnx: Path, inputs: list[np.ndarray]) -> Path:
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
            calibrate_method=CalibrationMethod.MinMax,
            # Reduce ranges every 64 samples instead of keeping every activation (12 GB at 300 samples). Not a
            # divisor of the sample count: onnxruntime raises "No data is collected" on an empty last chunk.
            extra_options={"CalibMaxIntermediateOutputs": 64 if len(inputs) % 64 else 63},
        )
    return out_onnx


def quantize_model(models_dir: Path, manifest: dict, model: str, calib_dir: Path, samples: int) -> dict:
    fp32 = models_dir / manifest["models"][model]["variants"]["fp32"]["files"]["onnx"]["path"]
    inputs = calibration_inputs(models_dir, model, calib_dir, samples)
    out_dir = models_dir / model
    written = {
        "openvino": quantize_openvino(fp32, out_dir / "int8-openvino.xml", inputs),
        "onnx": quantize_onnxruntime(fp32, out_dir / "int8-qdq.onnx", inputs),
    }
    return written
