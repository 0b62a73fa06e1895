"""Luxonis OAK colour + stereo depth (depthai v3), depth aligned to the colour pixels on the device.

`source: oak` (first device) or `oak:<device id>` (its MxID or IP address) starts a depthai pipeline on the
camera: the colour camera (CAM_A) at the camera's `width` x `height` (default 640 x 480), BGR, 30 fps; the
`Depth` node (the stereo pair and the OAK's own depth backend) aligned to that output (`setAlignTo`), so
depth pixel (x, y) is what colour pixel (x, y) shows, in millimetres; and a `Sync` node pairing each colour
frame with the depth frame nearest in time (within half a frame period). The focal lengths come from the
device's calibration for CAM_A at the output size; the colour/depth time difference from the two frames'
timestamps. A message without depth is delivered with `depth=None` (the depth gate then fails closed).

depthai (PyPI, x86-64 and aarch64 wheels) is imported when the source opens, with a clear error when
missing. The tests drive this class through the SDK's own host-side objects: a `dai.MessageQueue` fed with
`dai.MessageGroup`s of `dai.ImgFrame`s made in software, and a `dai.CalibrationHandler` given intrinsics in
software (`messages=`, `calibration=`). The device pipeline (`_start`) needs a camera: **it has never run
against a real OAK**, nor has any frame of a real OAK passed through this code.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import cv2
import numpy as np

from agent.capture.sources import RawFrame
from agent.config import CameraConfig
from agent.errors import DeviceError, TransientError
from agent.types import DepthFrame

log = logging.getLogger(__name__)

DEFAULT_SIZE = (640, 480)
FPS = 30
RGB, DEPTH = "rgb", "depth"  # the Sync node's input names: the keys of every MessageGroup


def load_depthai() -> Any:
    try:
        import depthai as dai
    except ImportError as exc:  # optional: only an OAK camera needs it
        raise DeviceError(f"an 'oak' camera needs depthai: pip install depthai ({exc})") from exc
    return dai


class OakSource:
    """A FrameSource (agent/capture/sources.py) of colour frames carrying registered depth."""

    def __init__(self, cfg: CameraConfig, messages: Any = None, calibration: Any = None) -> None:
        self.name = cfg.id
        # A camera is live (stale frames are dropped); a software feed is a recording: nothing is dropped.
        self.live = messages is None
        self._cfg = cfg
        self._injected = (messages, calibration)
        self._queue: Any = None
        self._pipeline: Any = None
        self._focal: dict[tuple[int, int], tuple[float, float]] = {}
        self._device: Any = None
        self._calibration: Any = None
        self._dai: Any = None

    @property
    def size(self) -> tuple[int, int]:
        return self._cfg.width or DEFAULT_SIZE[0], self._cfg.height or DEFAULT_SIZE[1]

    def open(self) -> None:
        self.close()
        dai = self._dai = load_depthai()
        messages, calibration = self._injected
        if messages is not None:
            self._queue, self._calibration = messages, calibration
            return
        try:
            self._start(dai)
        except RuntimeError as exc:  # no device, busy, unsupported mode: retried by the worker with backoff
            self.close()
            raise TransientError(
                f"camera {self.name}: cannot start the OAK: {exc}", code="source_open"
            ) from exc

    def _start(self, dai: Any) -> None:
        """The device pipeline: colour, depth aligned to it, both paired by time, one host queue."""
        device_id = self._cfg.source.partition(":")[2]
        device = self._device = dai.Device(dai.DeviceInfo(device_id)) if device_id else dai.Device()
        pipeline = dai.Pipeline(device)
        colour = pipeline.create(dai.node.Camera).build(dai.CameraBoardSocket.CAM_A)
        rgb = colour.requestOutput(self.size, dai.ImgFrame.Type.BGR888i, fps=FPS)
        depth = pipeline.create(dai.node.Depth)
        depth.setAlignTo(rgb)
        sync = pipeline.create(dai.node.Sync)
        sync.setSyncThreshold(timedelta(seconds=1 / (2 * FPS)))
        rgb.link(sync.inputs[RGB])
        depth.depth.link(sync.inputs[DEPTH])
        # Non-blocking and short: a slow consumer drops the oldest pairs on the device side, never stalls it.
        self._queue = sync.out.createOutputQueue(maxSize=4, blocking=False)
        self._calibration = device.readCalibration()
        pipeline.start()
        self._pipeline = pipeline

    def read(self) -> RawFrame | None:
        if self._queue is None:
            raise TransientError(f"camera {self.name}: not open", code="source_closed")
        dai = self._dai
        try:
            group = self._queue.get(timeout=timedelta(seconds=self._cfg.stall_timeout_s))
        except dai.MessageQueue.QueueException as exc:  # closed: the recording ended, or the device went away
            if not self.live:
                return None
            raise TransientError(f"camera {self.name}: OAK queue closed: {exc}", code="source_read") from exc
        if group is None:
            raise TransientError(
                f"camera {self.name}: no OAK frame within {self._cfg.stall_timeout_s:g} s", code="source_read"
            )
        return self._to_raw(group)

    def _to_raw(self, group: Any) -> RawFrame:
        """A synced message group as colour pixels (a copy) with registered depth in mm."""
        colour = group[RGB] if RGB in group.getMessageNames() else None
        if colour is None:
            raise TransientError(
                f"camera {self.name}: OAK message without a colour frame", code="source_read"
            )
        pixels = np.array(colour.getCvFrame(), np.uint8)
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            raise TransientError(
                f"camera {self.name}: colour frame is not BGR ({pixels.shape})", code="source_read"
            )
        depth = group[DEPTH] if DEPTH in group.getMessageNames() else None
        if depth is None:
            return RawFrame(pixels)
        mm = np.asarray(depth.getFrame())
        if mm.dtype != np.uint16 or mm.ndim != 2:
            raise TransientError(
                f"camera {self.name}: OAK depth is not 16-bit mm ({mm.dtype}, {mm.shape})", code="source_read"
            )
        if mm.shape != pixels.shape[:2]:  # aligned to the colour camera, maybe at another size: same view
            mm = cv2.resize(mm, (pixels.shape[1], pixels.shape[0]), interpolation=cv2.INTER_NEAREST)
        fx, fy = self._focal_lengths(pixels.shape[1], pixels.shape[0])
        skew = abs((colour.getTimestamp() - depth.getTimestamp()).total_seconds())
        return RawFrame(pixels, depth=DepthFrame(mm.astype(np.float32), fx, fy, skew))

    def _focal_lengths(self, width: int, height: int) -> tuple[float, float]:
        """CAM_A's focal lengths in pixels of a width x height output (the calibration scales them)."""
        if (width, height) not in self._focal:
            if self._calibration is None:
                raise DeviceError(f"camera {self.name}: no OAK calibration to measure depth with")
            k = self._calibration.getCameraIntrinsics(self._dai.CameraBoardSocket.CAM_A, width, height)
            self._focal[(width, height)] = (float(k[0][0]), float(k[1][1]))
        return self._focal[(width, height)]

    def close(self) -> None:
        if self._pipeline is not None:
            try:
                self._pipeline.stop()
            except RuntimeError as exc:
                log.debug("camera %s: stopping the OAK pipeline: %s", self.name, exc)
        if self._device is not None:
            try:
                self._device.close()
            except RuntimeError as exc:
                log.debug("camera %s: closing the OAK: %s", self.name, exc)
        self._pipeline = self._queue = self._device = None
        self._focal = {}
