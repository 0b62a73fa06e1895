"""One small interface over OpenVINO and ONNX Runtime.

Runtimes know tensors and devices, nothing about faces; they import only the manifest and config."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from agent.config import OnnxRuntimeConfig, OpenVINORuntimeConfig, RuntimeConfig
from agent.inference.manifest import ModelFiles


class Session(Protocol):
    """A compiled model ready to run. `run` is thread-safe and returns outputs by name."""

    runtime: str
    device: str

    def run(self, inputs: np.ndarray) -> dict[str, np.ndarray]: ...

    @property
    def output_names(self) -> list[str]: ...


def open_session(files: ModelFiles, config: RuntimeConfig) -> Session:
    """Compile `files` on the configured runtime. Raises DeviceError listing what is available."""
    if isinstance(config, OpenVINORuntimeConfig):
        from agent.inference.runtime.openvino_rt import OpenVINOSession

        return OpenVINOSession(files, config)
    if isinstance(config, OnnxRuntimeConfig):
        from agent.inference.runtime.onnxruntime_rt import OnnxRuntimeSession

        return OnnxRuntimeSession(files, config)
    raise TypeError(f"unknown runtime config {type(config).__name__}")


def available_devices() -> dict[str, list[str]]:
    """What each installed runtime can use on this machine ({} entry with an error string when missing)."""
    from agent.inference.runtime.onnxruntime_rt import available_providers
    from agent.inference.runtime.openvino_rt import available_ov_devices

    return {"openvino": available_ov_devices(), "onnxruntime": available_providers()}
