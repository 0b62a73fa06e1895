"""OpenVINO runtime: device selection, explicit precision hint, compiled-model cache."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from agent.config import OpenVINORuntimeConfig
from agent.errors import DeviceError, ModelError
from agent.inference.manifest import ModelFiles


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:  # optional at import time of the agent, required when selected
        raise DeviceError(
            "runtime 'openvino' selected but the openvino package is not installed "
            "(pip install openvino, or choose runtime kind 'onnxruntime')"
        ) from exc
    return openvino


def available_ov_devices() -> list[str]:
    try:
        ov = _import_openvino()
    except DeviceError as exc:
        return [f"unavailable: {exc}"]
    return list(ov.Core().available_devices)


def _check_device(core: Any, device: str) -> None:
    available = list(core.available_devices)
    wanted = device.split(":", 1)[1].split(",") if ":" in device else [device]
    if device.startswith(("AUTO", "MULTI", "HETERO")) and ":" not in device:
        return
    for dev in wanted:
        base = dev.split(".")[0]
        if dev not in available and base not in [a.split(".")[0] for a in available]:
            raise DeviceError(
                f"OpenVINO device {dev!r} is not available on this machine; available: {', '.join(available)}"
            )


class OpenVINOSession:
    runtime = "openvino"

    def __init__(self, files: ModelFiles, config: OpenVINORuntimeConfig) -> None:
        ov = _import_openvino()
        core = ov.Core()
        _check_device(core, config.device)
        if config.cache_dir is not None:
            config.cache_dir.mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(config.cache_dir)})
        properties: dict[str, Any] = {
            "PERFORMANCE_HINT": config.performance_hint,
        }
        base = config.device.split(".")[0]
        if base in ("CPU", "GPU"):
            # Explicit: the CPU plugin defaults to bf16 on CPUs with avx512_bf16, which broke BlazeFace.
            properties["INFERENCE_PRECISION_HINT"] = config.precision
        if base == "CPU" and config.num_threads:
            properties["INFERENCE_NUM_THREADS"] = config.num_threads
        try:
            model = core.read_model(str(files.model), str(files.weights) if files.weights else None)
            self._compiled = core.compile_model(model, config.device, properties)
        except RuntimeError as exc:
            raise ModelError(
                f"OpenVINO could not compile {files.model.name} on {config.device}: {exc}"
            ) from exc
        self.device = config.device
        self._names = [out.get_any_name() for out in self._compiled.outputs]
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()

    @property
    def output_names(self) -> list[str]:
        return list(self._names)

    def run(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:
            result = self._request.infer({0: np.ascontiguousarray(inputs)})
            return {name: np.array(result[i]) for i, name in enumerate(self._names)}
