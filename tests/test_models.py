"""Model files and runtimes: checksums enforced, unavailable devices refused with what is available."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from agent.config import EngineConfig, OnnxRuntimeConfig, OpenVINORuntimeConfig, parse_model
from agent.errors import ConfigError, DeviceError, ModelError
from agent.inference.engine import FaceEngine
from agent.inference.manifest import Manifest


def test_manifest_records_every_fact(models_dir):
    data = json.loads((models_dir / "manifest.json").read_text())
    for name, entry in data["models"].items():
        for key in ("kind", "licence", "input", "output", "source"):
            assert key in entry, (name, key)
        assert {"package", "version", "sha256"} <= set(entry["source"])
        for variant, var in entry["variants"].items():
            for rec in var["files"].values():
                assert len(rec["sha256"]) == 64
                assert (models_dir / rec["path"]).is_file()
            if entry["kind"] == "embedder":
                # Every space has its own calibration: each runtime, without and with flip; the default
                # face-mesh alignment with flip where the model has one.
                keys = ["openvino", "onnxruntime", "openvino+flip", "onnxruntime+flip"]
                if "align_mesh" in entry and variant == "int8":
                    keys += ["openvino+flip+mesh", "onnxruntime+flip+mesh"]
                for key in keys:
                    _check_calibration(var["thresholds"][key], (name, variant, key))


def _check_calibration(cal: dict, where: tuple) -> None:
    thr = cal["cosine_at_far"]
    values = [thr[k] for k in ("1e-3", "1e-4", "1e-5", "1e-6")]
    assert values == sorted(values), where  # stricter FAR, higher bar
    # The far_curve: half decades from 1e-2 to 1e-7, from the same impostor pairs as cosine_at_far.
    far, cosine = cal["far_curve"]["far"], cal["far_curve"]["cosine"]
    assert len(far) == len(cosine) == 11 and far[0] == 1e-2 and far[-1] == 1e-7, where
    assert np.allclose(np.diff(np.log10(far)), -0.5, atol=1e-3), where
    assert np.all(np.diff(cosine) >= 0), where  # monotone: lower FAR, higher (or equal) threshold
    assert cosine[0] < cosine[-1] <= 1.0, where
    for key, value in thr.items():  # the decades the curve shares with cosine_at_far agree exactly
        assert cosine[far.index(float(key))] == value, (where, key)


def test_checksum_mismatch_is_refused(models_dir, tmp_path):
    shutil.copytree(models_dir, tmp_path / "models")
    target = tmp_path / "models" / "blazeface-full" / "fp32.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        Manifest(tmp_path / "models").info("blazeface-full", "fp32", "onnxruntime")
    with pytest.raises(ModelError, match="sha256"):
        FaceEngine(EngineConfig(models_dir=tmp_path / "models"))


def test_missing_model_file_and_manifest(models_dir, tmp_path):
    with pytest.raises(ModelError, match="manifest not found"):
        Manifest(tmp_path)
    shutil.copytree(models_dir, tmp_path / "models")
    (tmp_path / "models" / "blazeface-full" / "fp32.onnx").unlink()
    with pytest.raises(ModelError, match="missing"):
        Manifest(tmp_path / "models").info("blazeface-full", "fp32", "openvino")
    with pytest.raises(ModelError, match="not in the manifest"):
        Manifest(models_dir).info("arcface", "fp32", "openvino")
    with pytest.raises(ModelError, match="no 'fp16' variant"):
        Manifest(models_dir).info("facenet-casia", "fp16", "openvino")


def test_unavailable_openvino_device_lists_available():
    with pytest.raises(DeviceError, match=r"'NPU' is not available.*available: .*CPU"):
        FaceEngine(EngineConfig(runtime=OpenVINORuntimeConfig(device="NPU")))


def test_unavailable_onnxruntime_provider_lists_available():
    rt = OnnxRuntimeConfig(providers=["TensorrtExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(DeviceError, match="TensorrtExecutionProvider.*available: .*CPUExecutionProvider"):
        FaceEngine(EngineConfig(runtime=rt))


def test_engine_config_is_strict():
    with pytest.raises(ConfigError, match="runtime.openvino.device"):
        parse_model(EngineConfig, {"runtime": {"kind": "openvino", "device": "TPU"}})
    with pytest.raises(ConfigError, match="Extra inputs"):
        parse_model(EngineConfig, {"detector": {"model": "blazeface-full", "treshold": 0.5}})
    with pytest.raises(ConfigError, match="runtime"):
        parse_model(EngineConfig, {"runtime": {"kind": "tensorflow"}})
    cfg = parse_model(
        EngineConfig, {"runtime": {"kind": "onnxruntime", "providers": ["CPUExecutionProvider"]}}
    )
    assert cfg.runtime.kind == "onnxruntime"
