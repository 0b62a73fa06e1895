"""`open_source`: the source object for a camera config, by its kind (one place that knows every kind)."""

from __future__ import annotations

from agent.capture.ir import IrPairedSource
from agent.capture.realsense import RealSenseSource
from agent.capture.sources import FrameSource, ImageFolderSource, OpenCVSource
from agent.config import CameraConfig
from agent.errors import ConfigError


def open_source(cfg: CameraConfig) -> FrameSource:
    """The source object for a camera config (not yet opened); with `ir`, paired with its IR camera."""
    base = _base_source(cfg)
    if cfg.ir is None:
        return base
    ir = cfg.ir
    # The IR camera as a plain source: raw frames (no rotation or ROI: the worker applies the colour
    # camera's to the registered IR), the colour camera's pacing and timeouts.
    ir_cfg = cfg.model_copy(
        update={
            "id": cfg.id,
            "source": ir.source,
            "kind": ir.kind,
            "rotate": 0,
            "roi": None,
            "width": None,
            "height": None,
            "ir": None,
            "depth": None,
        }
    )
    return IrPairedSource(base, _base_source(ir_cfg), ir.registration)


def _base_source(cfg: CameraConfig) -> FrameSource:
    kind = cfg.resolved_kind
    if kind == "folder":
        return ImageFolderSource(cfg, realtime=cfg.realtime)
    if kind in ("device", "stream", "file", "gstreamer"):
        return OpenCVSource(cfg, kind, realtime=cfg.realtime)
    if kind == "realsense":  # pyrealsense2 is imported when it opens, with a clear error when missing
        return RealSenseSource(cfg)
    raise ConfigError(f"camera {cfg.id}: unknown source kind {kind!r}")
