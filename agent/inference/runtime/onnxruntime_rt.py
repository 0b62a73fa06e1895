"""ONNX Runtime: execution providers chosen in config, fixed thread counts."""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.config import OnnxRuntimeConfig
from agent.errors import DeviceError, ModelError
from agent.inference.manifest import ModelFiles

_OPT_LEVELS = {
    "disabled": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise DeviceError(
            "runtime 'onnxruntime' selected but the onnxruntime package is not installed "
            "(pip install onnxruntime, or onnxruntime-gpu on Jetson)"
        ) from exc
    return onnxruntime


def available_providers() -> list[str]:
    try:
        return list(_import_ort().get_available_providers())
    except DeviceError as exc:
        return [f"unavailable: {exc}"]


class OnnxRuntimeSession:
    runtime = "onnxruntime"

    def __init__(self, files: ModelFiles, config: OnnxRuntimeConfig) -> None:
        ort = _import_ort()
        available = ort.get_available_providers()
        missing = [p for p in config.providers if p not in available]
        if missing:
            raise DeviceError(
                f"onnxruntime execution provider(s) {', '.join(missing)} not available; "
                f"available: {', '.join(available)}"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = config.intra_op_threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, _OPT_LEVELS[config.graph_optimization]
        )
        opts.log_severity_level = 3
        if files.onnx is None:
            raise ModelError(f"{files.model.name}: no ONNX file for onnxruntime in the manifest")
        try:
            self._session = ort.InferenceSession(
                str(files.onnx), sess_options=opts, providers=config.providers
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"onnxruntime could not load {files.onnx.name}: {exc}") from exc
        self.device = ",".join(self._session.get_providers())
        self._input = self._session.get_inputs()[0].name
        self._names = [o.name for o in self._session.get_outputs()]

    @property
    def output_names(self) -> list[str]:
        return list(self._names)

    def run(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        # InferenceSession.run is thread-safe.
        outs = self._session.run(self._names, {self._input: np.ascontiguousarray(inputs)})
        return dict(zip(self._names, outs, strict=True))
