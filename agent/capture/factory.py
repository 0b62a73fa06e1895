"""`open_source`: the source object for a camera config, by its kind (one place that knows every kind)."""

from __future__ import annotations

from agent.capture.ir import IrPairedSource
from agent.capture.oak import OakSource
from agent.capture.realsense import RealSenseSource
from agent.capture.sources import FrameSource, ImageFolderSource, OpenCVSource, ir_camera_config
from agent.config import CameraConfig
from agent.errors import ConfigError


def open_source(cfg: CameraConfig) -> FrameSource:
    """The source object for a camera config (not yet opened); with `ir`, paired with its IR camera."""
    base = _base_source(cfg)
    if cfg.ir is None:
        return base
    return IrPairedSource(base, _base_source(ir_camera_config(cfg)), cfg.ir.registration)


def _base_source(cfg: CameraConfig) -> FrameSource:
    kind = cfg.resolved_kind
    if kind == "folder":
        return ImageFolderSource(cfg, realtime=cfg.realtime)
    if kind in ("device", "stream", "file", "gstreamer"):
        return OpenCVSource(cfg, kind, realtime=cfg.realtime)
    if kind == "realsense":  # pyrealsense2 is imported when it opens, with a clear error when missing
        return RealSenseSource(cfg)
    if kind == "oak":  # depthai likewise
        return OakSource(cfg)
    raise ConfigError(f"camera {cfg.id}: unknown source kind {kind!r}")
