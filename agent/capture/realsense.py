"""Intel RealSense colour + depth (pyrealsense2), depth aligned to the colour pixels by the SDK.

`source: realsense` (first device) or `realsense:<serial>` opens a `rs.pipeline` with a colour stream (BGR)
and a depth stream (z16) at the camera's `width` x `height` (default 640 x 480) and 30 fps. Every frameset
is aligned with `rs.align(rs.stream.color)`, so depth pixel (x, y) is what colour pixel (x, y) shows; the
depth units come from the frame (`get_units()`, metres per step), the focal lengths from the colour stream's
intrinsics, and the colour/depth time difference from the frames' timestamps. Frames without depth are
delivered with `depth=None` (the depth gate then fails closed).

pyrealsense2 (PyPI; x86-64 wheels, Jetson builds from the vendor) is imported when the source opens, with a
clear error when missing. The tests drive this class through the SDK's own `rs.software_device` (frames made
in software, then synchronised and aligned by librealsense exactly as a camera's would be): the frameset
reader is injectable (`frames=`). **It has never run against a real RealSense camera.**
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np

from agent.capture.sources import RawFrame
from agent.config import CameraConfig
from agent.errors import DeviceError, TransientError
from agent.types import DepthFrame

log = logging.getLogger(__name__)

DEFAULT_SIZE = (640, 480)
FPS = 30


def load_pyrealsense2() -> Any:
    try:
        import pyrealsense2 as rs
    except ImportError as exc:  # optional: only a depth camera needs it
        raise DeviceError(
            "a 'realsense' camera needs pyrealsense2: pip install pyrealsense2 (on a Jetson: the vendor's "
            f"librealsense Python build) ({exc})"
        ) from exc
    return rs


class Framesets(Protocol):
    """What delivers framesets: a started rs.pipeline, or a reader of an rs.syncer fed by a software device
    (which returns None when its recording ends)."""

    def wait_for_frames(self, timeout_ms: int) -> Any: ...


class RealSenseSource:
    """A FrameSource (agent/capture/sources.py) of colour frames carrying registered depth."""

    def __init__(self, cfg: CameraConfig, frames: Framesets | None = None) -> None:
        self.name = cfg.id
        # A camera is live (stale frames are dropped); a software feed is a recording: nothing is dropped.
        self.live = frames is None
        self._cfg = cfg
        self._injected = frames
        self._frames: Framesets | None = None
        self._pipeline: Any = None
        self._align: Any = None
        self._rs: Any = None

    def open(self) -> None:
        self.close()
        rs = self._rs = load_pyrealsense2()
        self._align = rs.align(rs.stream.color)
        if self._injected is not None:
            self._frames = self._injected
            return
        width, height = self._cfg.width or DEFAULT_SIZE[0], self._cfg.height or DEFAULT_SIZE[1]
        config = rs.config()
        serial = self._cfg.source.partition(":")[2]
        if serial:
            config.enable_device(serial)
        config.enable_stream(rs.stream.color, width, height, rs.format.bgr8, FPS)
        # Depth at whatever resolution the sensor has at this rate: rs.align maps it onto the colour pixels.
        config.enable_stream(rs.stream.depth, rs.format.z16, FPS)
        pipeline = rs.pipeline()
        if not config.can_resolve(rs.pipeline_wrapper(pipeline)) and self._device_present(rs, serial):
            raise DeviceError(
                f"camera {self.name}: the RealSense offers no {width}x{height} BGR colour stream at {FPS} "
                "fps with a z16 depth stream: set cameras[].width / height to a mode it has "
                "(rs-enumerate-devices)"
            )
        try:
            pipeline.start(config)
        except RuntimeError as exc:  # no device, busy, unsupported mode: retried by the worker with backoff
            msg = f"camera {self.name}: cannot start RealSense: {exc}"
            raise TransientError(msg, code="source_open") from exc
        self._pipeline = self._frames = pipeline

    def read(self) -> RawFrame | None:
        if self._frames is None:
            raise TransientError(f"camera {self.name}: not open", code="source_closed")
        try:
            frameset = self._frames.wait_for_frames(int(self._cfg.stall_timeout_s * 1000))
        except RuntimeError as exc:  # librealsense: "Frame didn't arrive within ..." or a lost device
            msg = f"camera {self.name}: no RealSense frame: {exc}"
            raise TransientError(msg, code="source_read") from exc
        if frameset is None:  # an injected recording ended
            return None
        try:
            return to_raw(self._align.process(frameset), self.name)
        except RuntimeError as exc:  # librealsense failing mid-frame (e.g. the device went away): reopen
            raise TransientError(
                f"camera {self.name}: RealSense frame unusable: {exc}", code="source_read"
            ) from exc

    @staticmethod
    def _device_present(rs: Any, serial: str) -> bool:
        """Is the camera there (then a mode that does not resolve is a config error, not a transient one)?"""
        try:
            devices = list(rs.context().query_devices())
            return any(not serial or d.get_info(rs.camera_info.serial_number) == serial for d in devices)
        except RuntimeError:
            return False

    def close(self) -> None:
        if self._pipeline is not None:
            try:
                self._pipeline.stop()
            except RuntimeError as exc:
                log.debug("camera %s: stopping the RealSense pipeline: %s", self.name, exc)
        self._pipeline = self._frames = None


def to_raw(aligned: Any, name: str) -> RawFrame:
    """An aligned frameset as colour pixels (copied out of the SDK's buffer) with registered depth in mm."""
    colour = aligned.get_color_frame()
    if not colour:
        raise TransientError(f"camera {name}: frameset without a colour frame", code="source_read")
    pixels = np.array(np.asanyarray(colour.get_data()), np.uint8)  # a copy: the SDK reuses its buffers
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise TransientError(f"camera {name}: colour frame is not BGR ({pixels.shape})", code="source_read")
    depth = aligned.get_depth_frame()
    if not depth:
        return RawFrame(pixels)
    intr = colour.get_profile().as_video_stream_profile().get_intrinsics()
    mm = np.asanyarray(depth.get_data()).astype(np.float32) * np.float32(depth.get_units() * 1000.0)
    skew = abs(float(colour.get_timestamp()) - float(depth.get_timestamp())) / 1000.0
    return RawFrame(pixels, depth=DepthFrame(mm, float(intr.fx), float(intr.fy), skew))
